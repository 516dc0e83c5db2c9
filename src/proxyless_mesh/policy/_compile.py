"""RBAC rules compiled to predicates over one normalized request.

Compilation happens once per policy update (regexes compiled, CIDRs parsed,
trees flattened into closures); a request only calls the closures. Semantics
follow Envoy's RBAC matchers:
- a header that appears several times is matched on its values joined with
  "," (the integrations join them before the request gets here);
- an absent header never matches, even with `invert_match`, except a
  PRESENT matcher with `invert` ("header is absent") - Envoy's HeaderUtility;
- regexes must match the whole value (RE2 `FullMatch`);
- `authenticated` never matches a request without a verified peer identity;
- a metadata `list_match` also accepts a scalar value as a one-element list,
  because Istio stores string claims that way.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from proxyless_mesh.model import (
    AndRules,
    AnyRule,
    Authenticated,
    CidrRange,
    DestinationIp,
    DestinationPort,
    DestinationPortRange,
    DirectRemoteIp,
    HeaderMatcher,
    MatchKind,
    Metadata,
    NotRule,
    OrRules,
    RbacRule,
    RemoteIp,
    RequestedServerName,
    StringMatcher,
    UrlPath,
)
from proxyless_mesh.policy._errors import PolicyConfigError

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(slots=True)
class RequestContext:
    """What RBAC sees of one request, after normalization and JWT checks.

    `headers` has lower-case names and duplicate values joined with ",";
    `host` is the normalized authority; `path` the normalized path without
    query. `metadata` maps a filter name to its dynamic metadata (Istio's
    `istio_authn` for JWT results)."""

    method: str
    host: str
    path: str
    query: str = ""
    scheme: str = "http"
    headers: Mapping[str, str] = field(default_factory=dict)
    peer_principal: str | None = None
    source_ip: IpAddress | None = None
    destination_ip: IpAddress | None = None
    destination_port: int | None = None
    sni: str | None = None
    metadata: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """Header lookup with Envoy's pseudo-headers (`host` aliases `:authority`)."""
        if name[0] == ":" or name == "host":
            if name in (":authority", "host"):
                return self.host
            if name == ":method":
                return self.method
            if name == ":path":
                return self.path + ("?" + self.query if self.query else "")
            if name == ":scheme":
                return self.scheme
            return None
        return self.headers.get(name)


Predicate = Callable[[RequestContext], bool]
StrPredicate = Callable[[str], bool]


def compile_string(m: StringMatcher, where: str = "matcher") -> StrPredicate:
    """A predicate for one StringMatcher (PRESENT matches any value)."""
    kind = m.kind
    if kind is MatchKind.REGEX:
        try:
            rx = re.compile(m.value, re.IGNORECASE if m.ignore_case else 0)
        except re.error as exc:
            raise PolicyConfigError(where, f"invalid regex {m.value!r}: {exc}") from exc
        return lambda v: rx.fullmatch(v) is not None
    if kind is MatchKind.PRESENT:
        return lambda v: True
    want = m.value.lower() if m.ignore_case else m.value
    test: StrPredicate
    if kind is MatchKind.EXACT:
        test = want.__eq__
    elif kind is MatchKind.PREFIX:
        test = lambda v: v.startswith(want)  # noqa: E731
    elif kind is MatchKind.SUFFIX:
        test = lambda v: v.endswith(want)  # noqa: E731
    elif kind is MatchKind.CONTAINS:
        test = lambda v: want in v  # noqa: E731
    else:
        raise PolicyConfigError(where, f"unsupported string match kind {kind}")
    if m.ignore_case:
        inner = test
        return lambda v: inner(v.lower())
    return test


def parse_cidr(cidr: CidrRange) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(f"{cidr.address_prefix}/{cidr.prefix_len}", strict=False)
    except ValueError as exc:
        raise PolicyConfigError("cidr", f"invalid CIDR {cidr}: {exc}") from exc


def compile_rule(rule: RbacRule) -> Predicate:
    """Turn one Permission/Principal tree into a predicate."""
    if isinstance(rule, AnyRule):
        return lambda ctx: True
    if isinstance(rule, AndRules):
        parts = tuple(compile_rule(r) for r in rule.rules)
        return lambda ctx: all(p(ctx) for p in parts)
    if isinstance(rule, OrRules):
        parts = tuple(compile_rule(r) for r in rule.rules)
        return lambda ctx: any(p(ctx) for p in parts)
    if isinstance(rule, NotRule):
        inner = compile_rule(rule.rule)
        return lambda ctx: not inner(ctx)
    if isinstance(rule, HeaderMatcher):
        return _compile_header(rule)
    if isinstance(rule, UrlPath):
        test = compile_string(rule.matcher, "url_path")
        return lambda ctx: test(ctx.path)
    if isinstance(rule, DestinationPort):
        port = rule.port
        return lambda ctx: ctx.destination_port == port
    if isinstance(rule, DestinationPortRange):
        start, end = rule.start, rule.end
        return lambda ctx: ctx.destination_port is not None and start <= ctx.destination_port < end
    if isinstance(rule, DestinationIp):
        net = parse_cidr(rule.cidr)
        return lambda ctx: ctx.destination_ip is not None and ctx.destination_ip in net
    if isinstance(rule, DirectRemoteIp | RemoteIp):
        src_net = parse_cidr(rule.cidr)
        return lambda ctx: ctx.source_ip is not None and ctx.source_ip in src_net
    if isinstance(rule, RequestedServerName):
        sni_test = compile_string(rule.matcher, "requested_server_name")
        return lambda ctx: ctx.sni is not None and sni_test(ctx.sni)
    if isinstance(rule, Authenticated):
        if rule.principal_name is None:
            return lambda ctx: ctx.peer_principal is not None
        p_test = compile_string(rule.principal_name, "authenticated.principal_name")
        return lambda ctx: ctx.peer_principal is not None and p_test(ctx.peer_principal)
    if isinstance(rule, Metadata):
        return _compile_metadata(rule)
    raise PolicyConfigError("rule", f"unsupported RBAC rule {type(rule).__name__}")


def _compile_header(h: HeaderMatcher) -> Predicate:
    name, invert = h.name.lower(), h.invert
    if h.matcher.kind is MatchKind.PRESENT:
        return lambda ctx: (ctx.header(name) is not None) != invert
    test = compile_string(h.matcher, f"header {name}")

    def check(ctx: RequestContext) -> bool:
        value = ctx.header(name)
        if value is None:
            return False
        return test(value) != invert

    return check


def _compile_metadata(m: Metadata) -> Predicate:
    filter_name, path, invert, list_match = m.filter, m.path, m.invert, m.list_match
    present = m.matcher.kind is MatchKind.PRESENT
    test = compile_string(m.matcher, f"metadata {'.'.join(path)}")

    def check(ctx: RequestContext) -> bool:
        value: object = ctx.metadata.get(filter_name)
        for key in path:
            if not isinstance(value, Mapping):
                value = None
                break
            value = value.get(key)
        if value is None:
            hit = False
        elif present:
            hit = True
        elif list_match:
            items = value if isinstance(value, list | tuple) else (value,)
            hit = any(test(_as_text(item)) for item in items)
        else:
            hit = isinstance(value, str) and test(value)
        return hit != invert

    return check


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)
