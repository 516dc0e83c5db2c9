"""RouteConfiguration protobuf -> model, with the checks gRPC applies to routes.

Regexes are compiled here with Python's `re` so a pattern the router could not
use is NACKed at config time rather than failing on the request path.
"""

from __future__ import annotations

import re
from typing import Any

from proxyless_mesh.errors import XdsResourceError
from proxyless_mesh.model import (
    CorsPolicy,
    DirectResponse,
    HashPolicy,
    HashPolicyKind,
    HeaderMatcher,
    MatchKind,
    MirrorPolicy,
    PathMatcher,
    RegexRewrite,
    RetryPolicy,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    StringMatcher,
    VirtualHost,
    WeightedCluster,
)
from proxyless_mesh.xds_client import _decode_policies as policies
from proxyless_mesh.xds_client._message import unpack_any

CORS_TYPE_URL = "type.googleapis.com/envoy.config.route.v3.CorsPolicy"

_UINT32_MAX = 2**32 - 1
_PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
_PREVIOUS_PRIORITIES = "previous_priorities"

# Legacy HeaderMatcher fields that hold a plain string, and what they mean.
_HEADER_STRING_FIELDS = {
    "exact_match": MatchKind.EXACT,
    "prefix_match": MatchKind.PREFIX,
    "suffix_match": MatchKind.SUFFIX,
    "contains_match": MatchKind.CONTAINS,
}

_STRING_MATCHER_FIELDS = {
    "exact": MatchKind.EXACT,
    "prefix": MatchKind.PREFIX,
    "suffix": MatchKind.SUFFIX,
    "contains": MatchKind.CONTAINS,
}


def decode_route_configuration_message(msg: Any) -> RouteConfiguration:
    """Decode a RouteConfiguration message (from RDS or inline in an HCM)."""
    vhosts = tuple(
        _virtual_host(vh, f"virtual_hosts[{i}]") for i, vh in enumerate(msg.virtual_hosts)
    )
    return RouteConfiguration(name=msg.name, virtual_hosts=vhosts)


def _virtual_host(vh: Any, where: str) -> VirtualHost:
    if not vh.domains:
        raise XdsResourceError(f"{where} ({vh.name!r}): no domains")
    routes = []
    for i, r in enumerate(vh.routes):
        route = _route(r, vh, f"{where}.routes[{i}]")
        if route is not None:
            routes.append(route)
    return VirtualHost(name=vh.name, domains=tuple(vh.domains), routes=tuple(routes))


def _route(r: Any, vh: Any, where: str) -> Route | None:
    """A Route, or None for a route that can never match here and is skipped
    (gRPC does the same for routes with query-parameter matchers)."""
    match = _route_match(r.match, f"{where}.match")
    if match is None:
        return None
    which = r.WhichOneof("action")
    if which is None:
        raise XdsResourceError(f"{where}: route has no action")
    # filter_action / non_forwarding_action: the mesh does not serve these, but
    # the route still matches (and then fails the request), so it is kept with
    # action None instead of skipped.
    action = _route_action(r.route, vh, f"{where}.route") if which == "route" else None
    redirect = policies.redirect(r.redirect, f"{where}.redirect") if which == "redirect" else None
    direct = None
    if which == "direct_response":
        direct = _direct_response(r.direct_response, f"{where}.direct_response")
    return Route(
        name=r.name,
        match=match,
        action=action,
        redirect=redirect,
        direct_response=direct,
        cors=_cors(r, vh, where),
        fault=policies.fault(r, vh, where),
        request_headers=policies.header_mutation(
            r.request_headers_to_add, r.request_headers_to_remove, f"{where}.request_headers"
        ),
        response_headers=policies.header_mutation(
            r.response_headers_to_add, r.response_headers_to_remove, f"{where}.response_headers"
        ),
    )


def _direct_response(d: Any, where: str) -> DirectResponse:
    if not 200 <= d.status <= 599:
        raise XdsResourceError(f"{where}.status {d.status} is not an HTTP status (200-599)")
    which = d.body.WhichOneof("specifier") if d.HasField("body") else None
    if which == "inline_string":
        body = d.body.inline_string.encode()
    elif which == "inline_bytes":
        body = d.body.inline_bytes
    elif which is None:
        body = b""
    else:
        raise XdsResourceError(f"{where}.body.{which} is not supported (inline only)")
    return DirectResponse(status=d.status, body=body)


def _cors(route: Any, vhost: Any, where: str) -> CorsPolicy | None:
    """The CorsPolicy that applies (the route's, else its virtual host's),
    found by type in `typed_per_filter_config` as the fault is."""
    for owner, owner_where in ((route, where), (vhost, "virtual_host")):
        for name, packed in sorted(owner.typed_per_filter_config.items()):
            config_where = f"{owner_where}.typed_per_filter_config[{name}]"
            if packed.type_url == policies.FILTER_CONFIG_TYPE_URL:
                wrapper = unpack_any(packed, policies.FILTER_CONFIG, config_where)
                packed = wrapper.config
            if packed.type_url == CORS_TYPE_URL:
                message = unpack_any(packed, CORS_TYPE_URL.rsplit("/", 1)[-1], config_where)
                return _cors_policy(message, config_where)
    return None


def _cors_policy(c: Any, where: str) -> CorsPolicy:
    origins = tuple(
        _string_matcher(m, f"{where}.allow_origin_string_match[{i}]")
        for i, m in enumerate(c.allow_origin_string_match)
    )
    return CorsPolicy(
        allow_origins=origins,
        allow_methods=c.allow_methods,
        allow_headers=c.allow_headers,
        expose_headers=c.expose_headers,
        max_age=c.max_age,
        allow_credentials=c.allow_credentials.value if c.HasField("allow_credentials") else False,
        forward_not_matching_preflights=(
            c.forward_not_matching_preflights.value
            if c.HasField("forward_not_matching_preflights")
            else True
        ),
    )


def _route_match(m: Any, where: str) -> RouteMatch | None:
    if m.query_parameters:
        return None
    if m.HasField("runtime_fraction"):
        raise XdsResourceError(f"{where}: runtime_fraction is not supported")
    case_sensitive = m.case_sensitive.value if m.HasField("case_sensitive") else True
    kind = m.WhichOneof("path_specifier")
    if kind == "prefix":
        path = PathMatcher(MatchKind.PREFIX, m.prefix, case_sensitive)
    elif kind == "path":
        path = PathMatcher(MatchKind.EXACT, m.path, case_sensitive)
    elif kind == "safe_regex":
        # Envoy: case_sensitive does not apply to safe_regex.
        path = PathMatcher(MatchKind.REGEX, _regex(m.safe_regex.regex, f"{where}.safe_regex"))
    elif kind is None:
        raise XdsResourceError(f"{where}: path specifier missing (prefix, path or safe_regex)")
    else:
        raise XdsResourceError(f"{where}: path specifier {kind} is not supported")
    headers = tuple(_header_matcher(h, f"{where}.headers[{i}]") for i, h in enumerate(m.headers))
    return RouteMatch(path=path, headers=headers)


def _header_matcher(h: Any, where: str) -> HeaderMatcher:
    name = h.name.lower()
    if not name:
        raise XdsResourceError(f"{where}: header name is empty")
    invert = h.invert_match
    which = h.WhichOneof("header_match_specifier")
    if which in _HEADER_STRING_FIELDS:
        matcher = StringMatcher(_HEADER_STRING_FIELDS[which], getattr(h, which))
    elif which == "safe_regex_match":
        regex = _regex(h.safe_regex_match.regex, f"{where}.safe_regex_match")
        matcher = StringMatcher(MatchKind.REGEX, regex)
    elif which == "string_match":
        matcher = _string_matcher(h.string_match, f"{where}.string_match")
    elif which == "present_match" or which is None:
        # Envoy: no specifier means "present"; present_match false means "absent".
        matcher = StringMatcher(MatchKind.PRESENT)
        if which == "present_match" and not h.present_match:
            invert = not invert
    else:
        raise XdsResourceError(f"{where}: header matcher {which} is not supported")
    return HeaderMatcher(name=name, matcher=matcher, invert=invert)


def _string_matcher(sm: Any, where: str) -> StringMatcher:
    which = sm.WhichOneof("match_pattern")
    if which in _STRING_MATCHER_FIELDS:
        return StringMatcher(_STRING_MATCHER_FIELDS[which], getattr(sm, which), sm.ignore_case)
    if which == "safe_regex":
        # Envoy: ignore_case has no effect on safe_regex.
        return StringMatcher(MatchKind.REGEX, _regex(sm.safe_regex.regex, f"{where}.safe_regex"))
    raise XdsResourceError(f"{where}: string matcher {which or '(none)'} is not supported")


def _regex(pattern: str, where: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise XdsResourceError(f"{where}: invalid regex {pattern!r}: {exc}") from None
    return pattern


def _route_action(a: Any, vh: Any, where: str) -> RouteAction:
    which = a.WhichOneof("cluster_specifier")
    if which == "cluster":
        if not a.cluster:
            raise XdsResourceError(f"{where}.cluster is empty")
        clusters: tuple[WeightedCluster, ...] = (WeightedCluster(a.cluster, 1),)
    elif which == "weighted_clusters":
        clusters = _weighted_clusters(a.weighted_clusters, f"{where}.weighted_clusters")
    elif which is None:
        raise XdsResourceError(f"{where}: no cluster specifier")
    else:
        raise XdsResourceError(f"{where}: cluster specifier {which} is not supported")
    return RouteAction(
        clusters=clusters,
        timeout=_timeout(a, where),
        # gRPC: the route's retry policy, else the virtual host's.
        retry_policy=_retry_policy(
            a.retry_policy if a.HasField("retry_policy") else vh.retry_policy,
            f"{where}.retry_policy",
        )
        if a.HasField("retry_policy") or vh.HasField("retry_policy")
        else None,
        hash_policies=tuple(
            p
            for i, h in enumerate(a.hash_policy)
            if (p := _hash_policy(h, f"{where}.hash_policy[{i}]")) is not None
        ),
        mirrors=tuple(
            _mirror(m, f"{where}.request_mirror_policies[{i}]")
            for i, m in enumerate(a.request_mirror_policies)
        ),
        prefix_rewrite=a.prefix_rewrite or None,
        regex_rewrite=_regex_rewrite(a, where),
        host_rewrite=_host_rewrite(a, where),
    )


def _retry_policy(rp: Any, where: str) -> RetryPolicy:
    """Envoy's RetryPolicy with gRPC's checks on the backoff (gRFC A44)."""
    conditions = frozenset(c.strip() for c in rp.retry_on.split(",") if c.strip())
    base, maximum = 0.025, None
    if rp.HasField("retry_back_off"):
        back_off = rp.retry_back_off
        if not back_off.HasField("base_interval"):
            raise XdsResourceError(f"{where}.retry_back_off.base_interval is required")
        base = policies.seconds(back_off.base_interval, f"{where}.retry_back_off.base_interval")
        if base == 0:
            raise XdsResourceError(f"{where}.retry_back_off.base_interval must be greater than 0")
        if back_off.HasField("max_interval"):
            maximum = policies.seconds(back_off.max_interval, f"{where}.retry_back_off")
            if maximum < base:
                raise XdsResourceError(f"{where}.retry_back_off.max_interval < base_interval")
    per_try = None
    if rp.HasField("per_try_timeout"):
        per_try = policies.seconds(rp.per_try_timeout, f"{where}.per_try_timeout") or None
    names = {p.name for p in rp.retry_host_predicate} | {
        p.typed_config.type_url.rsplit(".", 1)[-1] for p in rp.retry_host_predicate
    }
    priority = {rp.retry_priority.name, rp.retry_priority.typed_config.type_url}
    return RetryPolicy(
        retry_on=conditions,
        num_retries=rp.num_retries.value if rp.HasField("num_retries") else 1,
        per_try_timeout=per_try,
        retriable_status_codes=tuple(rp.retriable_status_codes),
        retriable_headers=tuple(
            _header_matcher(h, f"{where}.retriable_headers[{i}]")
            for i, h in enumerate(rp.retriable_headers)
        ),
        base_interval=base,
        max_interval=maximum if maximum is not None else 10 * base,
        retry_other_hosts=bool(names & {_PREVIOUS_HOSTS, "PreviousHostsPredicate"}),
        retry_other_priorities=any(_PREVIOUS_PRIORITIES in p for p in priority if p),
    )


def _hash_policy(h: Any, where: str) -> HashPolicy | None:
    """A hash key source; kinds the mesh does not know (filter_state) are skipped,
    as gRPC skips the ones it does not support."""
    which = h.WhichOneof("policy_specifier")
    if which == "header":
        if not h.header.header_name:
            raise XdsResourceError(f"{where}.header.header_name is empty")
        return HashPolicy(HashPolicyKind.HEADER, h.header.header_name.lower(), terminal=h.terminal)
    if which == "cookie":
        if not h.cookie.name:
            raise XdsResourceError(f"{where}.cookie.name is empty")
        ttl = (
            policies.seconds(h.cookie.ttl, f"{where}.cookie.ttl")
            if h.cookie.HasField("ttl")
            else None
        )
        return HashPolicy(
            HashPolicyKind.COOKIE, h.cookie.name, h.cookie.path, ttl, terminal=h.terminal
        )
    if which == "connection_properties":
        if not h.connection_properties.source_ip:
            return None
        return HashPolicy(HashPolicyKind.SOURCE_IP, terminal=h.terminal)
    if which == "query_parameter":
        if not h.query_parameter.name:
            raise XdsResourceError(f"{where}.query_parameter.name is empty")
        return HashPolicy(
            HashPolicyKind.QUERY_PARAMETER, h.query_parameter.name, terminal=h.terminal
        )
    return None


def _mirror(m: Any, where: str) -> MirrorPolicy:
    if m.cluster_header or not m.cluster:
        raise XdsResourceError(f"{where}: only a named cluster is supported")
    fraction = 1.0
    if m.HasField("runtime_fraction"):
        value = m.runtime_fraction.default_value
        fraction = policies.fraction_percent(value, f"{where}.runtime_fraction") / 100.0
    return MirrorPolicy(cluster=m.cluster, fraction=fraction)


def _regex_rewrite(a: Any, where: str) -> RegexRewrite | None:
    if not a.HasField("regex_rewrite"):
        return None
    pattern = _regex(a.regex_rewrite.pattern.regex, f"{where}.regex_rewrite.pattern")
    return RegexRewrite(pattern=pattern, substitution=a.regex_rewrite.substitution)


def _host_rewrite(a: Any, where: str) -> str | None:
    which = a.WhichOneof("host_rewrite_specifier")
    if which is None:
        return None
    if which != "host_rewrite_literal":
        raise XdsResourceError(f"{where}.{which} is not supported (only host_rewrite_literal)")
    return a.host_rewrite_literal or None


def _weighted_clusters(wc: Any, where: str) -> tuple[WeightedCluster, ...]:
    """Clusters with weight 0 are dropped (gRPC does the same); at least one
    must remain, and the sum must fit in a uint32."""
    out: list[WeightedCluster] = []
    for i, cw in enumerate(wc.clusters):
        if cw.cluster_header:
            raise XdsResourceError(f"{where}.clusters[{i}]: cluster_header is not supported")
        if not cw.name:
            raise XdsResourceError(f"{where}.clusters[{i}]: cluster name is empty")
        weight = cw.weight.value if cw.HasField("weight") else 0
        if weight > 0:
            out.append(WeightedCluster(cw.name, weight))
    if not out:
        raise XdsResourceError(f"{where}: no valid clusters specified (empty or all weights zero)")
    if sum(c.weight for c in out) > _UINT32_MAX:
        raise XdsResourceError(f"{where}: sum of weights exceeds uint32 max")
    return tuple(out)


def _timeout(a: Any, where: str) -> float | None:
    """route.timeout if set, else max_stream_duration (what gRPC uses); zero
    means "no timeout" in both."""
    if a.HasField("timeout"):
        duration, field = a.timeout, "timeout"
    elif a.HasField("max_stream_duration") and a.max_stream_duration.HasField(
        "max_stream_duration"
    ):
        duration, field = a.max_stream_duration.max_stream_duration, "max_stream_duration"
    else:
        return None
    seconds = duration.seconds + duration.nanos / 1e9
    if seconds < 0:
        raise XdsResourceError(f"{where}.{field}: negative duration")
    return seconds or None
