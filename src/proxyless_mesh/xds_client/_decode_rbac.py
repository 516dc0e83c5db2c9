"""Envoy RBAC protobufs -> RBAC model (the library's decoder for the RBAC HTTP
filter on inbound listeners, and the inverse of the control plane's `translate.rbac_protos`).

What the model cannot enforce faithfully raises PolicyConfigError naming the
field, so the xDS client can NACK the listener instead of enforcing a
different policy than the control plane meant: CEL conditions, `matcher`
trees, filter_state, `sourced_metadata`, `uri_template`, custom matchers,
header `range_match`. The jwt_authn filter is read back only in the form
`translate.rbac_protos` writes (Istio's rule), with local JWKS.
"""

from __future__ import annotations

from typing import Any

from proxyless_mesh.errors import UnsupportedPolicyError
from proxyless_mesh.model import (
    AndRules,
    AnyRule,
    Authenticated,
    CidrRange,
    ClaimToHeader,
    DestinationIp,
    DestinationPort,
    DestinationPortRange,
    DirectRemoteIp,
    HeaderMatcher,
    JwtAuthentication,
    JwtHeader,
    JwtProvider,
    MatchKind,
    Metadata,
    NotRule,
    OrRules,
    Policy,
    Rbac,
    RbacAction,
    RbacRule,
    RemoteIp,
    RequestedServerName,
    StringMatcher,
    UrlPath,
)
from proxyless_mesh.xds_client._message import enum_name, is_set


def rbac_filter_from_proto(msg: Any) -> tuple[Rbac, ...]:
    """The HTTP filter -> its engines: the `shadow_rules` one (Istio's dry-run
    policies; never deciding) first, as Envoy evaluates it, then `rules`.
    Neither set: the filter does nothing, so no engine."""
    if msg.HasField("matcher") or msg.HasField("shadow_matcher"):
        raise UnsupportedPolicyError("RBAC.matcher", "matcher-based RBAC is not supported")
    engines = []
    if msg.HasField("shadow_rules"):
        shadow = rbac_from_proto(msg.shadow_rules)
        engines.append(Rbac(shadow.action, shadow.policies, shadow=True))
    if msg.HasField("rules"):
        engines.append(rbac_from_proto(msg.rules))
    return tuple(engines)


def rbac_from_proto(msg: Any) -> Rbac:
    action = enum_name("envoy.config.rbac.v3.RBAC.Action", msg.action)
    if action not in RbacAction.__members__:
        raise UnsupportedPolicyError("RBAC.action", f"action {action} is not supported")
    policies = []
    for name in sorted(msg.policies):  # Envoy keeps policies in a std::map: name order
        p = msg.policies[name]
        where = f"RBAC.policies[{name}]"
        if p.HasField("condition") or p.HasField("checked_condition"):
            raise UnsupportedPolicyError(f"{where}.condition", "CEL conditions are not supported")
        perms = tuple(permission_from_proto(x, f"{where}.permissions") for x in p.permissions)
        princ = tuple(principal_from_proto(x, f"{where}.principals") for x in p.principals)
        policies.append((name, Policy(perms, princ)))
    return Rbac(RbacAction(action), tuple(policies))


def string_matcher_from_proto(m: Any, where: str) -> StringMatcher:
    which = m.WhichOneof("match_pattern")
    if which == "exact":
        return StringMatcher(MatchKind.EXACT, m.exact, m.ignore_case)
    if which == "prefix":
        return StringMatcher(MatchKind.PREFIX, m.prefix, m.ignore_case)
    if which == "suffix":
        return StringMatcher(MatchKind.SUFFIX, m.suffix, m.ignore_case)
    if which == "contains":
        return StringMatcher(MatchKind.CONTAINS, m.contains, m.ignore_case)
    if which == "safe_regex":
        return StringMatcher(MatchKind.REGEX, m.safe_regex.regex)
    raise UnsupportedPolicyError(where, f"string matcher {which!r} is not supported")


def _cidr(c: Any) -> CidrRange:
    return CidrRange(c.address_prefix, c.prefix_len.value)


def _header(h: Any, where: str) -> HeaderMatcher:
    which = h.WhichOneof("header_match_specifier")
    name, invert = h.name.lower(), h.invert_match
    if h.treat_missing_header_as_empty:
        raise UnsupportedPolicyError(f"{where}.treat_missing_header_as_empty", "not supported")
    legacy: dict[str, MatchKind] = {
        "exact_match": MatchKind.EXACT,
        "prefix_match": MatchKind.PREFIX,
        "suffix_match": MatchKind.SUFFIX,
        "contains_match": MatchKind.CONTAINS,
    }
    if which == "string_match":
        return HeaderMatcher(name, string_matcher_from_proto(h.string_match, where), invert)
    if which in legacy:
        return HeaderMatcher(name, StringMatcher(legacy[which], getattr(h, which)), invert)
    if which == "safe_regex_match":
        return HeaderMatcher(name, StringMatcher(MatchKind.REGEX, h.safe_regex_match.regex), invert)
    if which == "present_match":
        # present_match: false is "absent", i.e. an inverted PRESENT.
        return HeaderMatcher(name, StringMatcher(MatchKind.PRESENT), invert == h.present_match)
    raise UnsupportedPolicyError(where, f"header matcher {which!r} is not supported")


def _metadata(m: Any, where: str) -> Metadata:
    path = tuple(seg.key for seg in m.path)
    value = m.value
    which = value.WhichOneof("match_pattern")
    if which == "present_match" and value.present_match:
        return Metadata(m.filter, path, StringMatcher(MatchKind.PRESENT), invert=m.invert)
    if which == "string_match":
        return Metadata(
            m.filter, path, string_matcher_from_proto(value.string_match, where), invert=m.invert
        )
    if (
        which == "list_match"
        and value.list_match.one_of.WhichOneof("match_pattern") == "string_match"
    ):
        inner = string_matcher_from_proto(value.list_match.one_of.string_match, where)
        return Metadata(m.filter, path, inner, list_match=True, invert=m.invert)
    raise UnsupportedPolicyError(where, f"metadata value matcher {which!r} is not supported")


def _common(msg: Any, which: str | None, where: str) -> RbacRule | None:
    if which == "any":
        return AnyRule()
    if which == "header":
        return _header(msg.header, f"{where}.header")
    if which == "url_path":
        if msg.url_path.WhichOneof("rule") != "path":
            raise UnsupportedPolicyError(f"{where}.url_path", "only `path` is supported")
        return UrlPath(string_matcher_from_proto(msg.url_path.path, f"{where}.url_path"))
    if which == "metadata":
        return _metadata(msg.metadata, f"{where}.metadata")
    return None


def permission_from_proto(msg: Any, where: str = "permission") -> RbacRule:
    which = msg.WhichOneof("rule")
    common = _common(msg, which, where)
    if common is not None:
        return common
    if which == "and_rules":
        return AndRules(tuple(permission_from_proto(r, where) for r in msg.and_rules.rules))
    if which == "or_rules":
        return OrRules(tuple(permission_from_proto(r, where) for r in msg.or_rules.rules))
    if which == "not_rule":
        return NotRule(permission_from_proto(msg.not_rule, where))
    if which == "destination_port":
        return DestinationPort(msg.destination_port)
    if which == "destination_port_range":
        r = msg.destination_port_range
        return DestinationPortRange(r.start, r.end)
    if which == "destination_ip":
        return DestinationIp(_cidr(msg.destination_ip))
    if which == "requested_server_name":
        sni = string_matcher_from_proto(msg.requested_server_name, f"{where}.requested_server_name")
        return RequestedServerName(sni)
    raise UnsupportedPolicyError(f"{where}.{which}", "permission rule is not supported")


def principal_from_proto(msg: Any, where: str = "principal") -> RbacRule:
    which = msg.WhichOneof("identifier")
    common = _common(msg, which, where)
    if common is not None:
        return common
    if which == "and_ids":
        return AndRules(tuple(principal_from_proto(r, where) for r in msg.and_ids.ids))
    if which == "or_ids":
        return OrRules(tuple(principal_from_proto(r, where) for r in msg.or_ids.ids))
    if which == "not_id":
        return NotRule(principal_from_proto(msg.not_id, where))
    if which == "authenticated":
        a = msg.authenticated
        if not a.HasField("principal_name"):
            return Authenticated(None)
        return Authenticated(string_matcher_from_proto(a.principal_name, f"{where}.authenticated"))
    if which in ("direct_remote_ip", "source_ip"):
        return DirectRemoteIp(_cidr(getattr(msg, which)))
    if which == "remote_ip":
        return RemoteIp(_cidr(msg.remote_ip))
    raise UnsupportedPolicyError(f"{where}.{which}", "principal rule is not supported")


# Fields that would change which tokens are accepted: not enforced, so refused.
_JWT_UNSUPPORTED_FIELDS = (
    "subjects",
    "require_expiration",
    "max_lifetime",
    "remote_jwks",
    "header_in_metadata",
    "failed_status_in_metadata",
)


def jwt_authentication_from_proto(msg: Any) -> JwtAuthentication:
    """The jwt_authn filter -> the model. Only Istio's layout is accepted: one
    rule for every path (`prefix: "/"`) requiring any of the providers or none
    (`allow_missing`); anything else would mean other semantics."""
    where = "JwtAuthentication"
    if msg.HasField("filter_state_rules"):
        raise UnsupportedPolicyError(f"{where}.filter_state_rules", "is not supported")
    if msg.requirement_map:
        raise UnsupportedPolicyError(f"{where}.requirement_map", "is not supported")
    if len(msg.rules) != 1:
        raise UnsupportedPolicyError(
            f"{where}.rules", 'expected exactly one rule (prefix "/", requires_any)'
        )
    rule = msg.rules[0]
    if rule.match.WhichOneof("path_specifier") != "prefix" or rule.match.prefix != "/":
        raise UnsupportedPolicyError(f"{where}.rules[0].match", 'only prefix "/" is supported')
    if rule.match.headers or rule.match.query_parameters:
        raise UnsupportedPolicyError(f"{where}.rules[0].match", 'only prefix "/" is supported')
    if rule.requires.WhichOneof("requires_type") != "requires_any":
        raise UnsupportedPolicyError(f"{where}.rules[0].requires", "must be requires_any")
    names: list[str] = []
    allow_missing = False
    for i, req in enumerate(rule.requires.requires_any.requirements):
        kind = req.WhichOneof("requires_type")
        if kind == "provider_name":
            names.append(req.provider_name)
        elif kind == "allow_missing":
            allow_missing = True
        else:
            raise UnsupportedPolicyError(
                f"{where}.rules[0].requires.requires_any.requirements[{i}]",
                f"{kind!r} is not supported (provider_name or allow_missing)",
            )
    if not allow_missing:
        raise UnsupportedPolicyError(
            f"{where}.rules[0].requires", "must allow a missing token (allow_missing), as Istio"
        )
    providers = []
    for name in names:
        if name not in msg.providers:
            raise UnsupportedPolicyError(f"{where}.rules[0]", f"unknown provider {name!r}")
        providers.append(jwt_provider_from_proto(name, msg.providers[name]))
    return JwtAuthentication(tuple(providers))


def jwt_provider_from_proto(name: str, p: Any) -> JwtProvider:
    where = f"JwtAuthentication.providers[{name}]"
    for field in _JWT_UNSUPPORTED_FIELDS:
        if is_set(p, field):
            raise UnsupportedPolicyError(f"{where}.{field}", "is not supported")
    if p.local_jwks.WhichOneof("specifier") != "inline_string":
        raise UnsupportedPolicyError(f"{where}.local_jwks", "only inline_string is supported")
    return JwtProvider(
        name=name,
        issuer=p.issuer,
        jwks=p.local_jwks.inline_string,
        audiences=tuple(p.audiences),
        from_headers=tuple(JwtHeader(h.name, h.value_prefix) for h in p.from_headers),
        from_params=tuple(p.from_params),
        from_cookies=tuple(p.from_cookies),
        forward=p.forward,
        claim_to_headers=tuple(
            ClaimToHeader(c.header_name, c.claim_name) for c in p.claim_to_headers
        ),
        clock_skew_seconds=p.clock_skew_seconds or 60,  # 0: Envoy's default, 60 s
        forward_payload_header=p.forward_payload_header,
        space_delimited_claims=tuple(p.normalize_payload_in_metadata.space_delimited_claims),
    )
