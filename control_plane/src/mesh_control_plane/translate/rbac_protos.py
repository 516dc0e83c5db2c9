"""RBAC model -> Envoy protobufs (envoy.config.rbac.v3, and the HTTP filter
envoy.extensions.filters.http.rbac.v3.RBAC). Used by the control plane to put
the RBAC filters on inbound listeners, in the order of the model's engines.
JWT authentication -> the jwt_authn HTTP filter (`jwt_authentication_to_proto`).

Leaves are placed on the side Envoy allows (permission-only or principal-only
leaves on the wrong side raise PolicyConfigError). Header matchers use
`string_match`, the non-deprecated form; a PRESENT matcher becomes
`present_match` (headers, metadata) - elsewhere it has no protobuf form.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, regex_pb2, string_pb2, value_pb2
from envoy.type.v3 import range_pb2
from google.protobuf import any_pb2, empty_pb2, wrappers_pb2

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
    JwtAuthentication,
    JwtProvider,
    MatchKind,
    Metadata,
    NotRule,
    OrRules,
    Rbac,
    RbacAction,
    RbacRule,
    RemoteIp,
    RequestedServerName,
    StringMatcher,
    UrlPath,
)
from proxyless_mesh.policy import PolicyConfigError

RBAC_FILTER_NAME = "envoy.filters.http.rbac"
JWT_FILTER_NAME = "envoy.filters.http.jwt_authn"


def rbac_to_proto(rbac: Rbac) -> rbac_pb2.RBAC:
    msg = rbac_pb2.RBAC(action=rbac_pb2.RBAC.Action.Value(rbac.action.value))
    for name, policy in rbac.policies:
        p = msg.policies[name]
        p.permissions.extend(permission_to_proto(r) for r in policy.permissions)
        p.principals.extend(principal_to_proto(r) for r in policy.principals)
    return msg


def rbac_filter_to_proto(rbac: Rbac) -> http_rbac_pb2.RBAC:
    """The HTTP filter config: one engine per filter, as istiod lays them out."""
    if rbac.shadow:
        return _shadow_only(rbac)
    return http_rbac_pb2.RBAC(rules=rbac_to_proto(rbac))


def rbac_filters_to_proto(engines: Iterable[Rbac]) -> list[tuple[RbacAction, http_rbac_pb2.RBAC]]:
    """The RBAC HTTP filters for a workload's engines: a shadow (dry-run)
    engine goes into the `shadow_rules` of the filter enforcing the same
    action, or alone in a filter with no `rules` (which then decides nothing),
    with Istio's stat prefix (`istio_dry_run_allow_` / `istio_dry_run_deny_`)."""
    filters: list[tuple[RbacAction, http_rbac_pb2.RBAC]] = []
    pending: Rbac | None = None
    for engine in engines:
        if pending is not None and (engine.shadow or engine.action is not pending.action):
            filters.append((pending.action, _shadow_only(pending)))
            pending = None
        if engine.shadow:
            pending = engine
            continue
        msg = http_rbac_pb2.RBAC(rules=rbac_to_proto(engine))
        if pending is not None:
            msg.shadow_rules.CopyFrom(rbac_to_proto(pending))
            msg.shadow_rules_stat_prefix = pending.shadow_prefix
            pending = None
        filters.append((engine.action, msg))
    if pending is not None:
        filters.append((pending.action, _shadow_only(pending)))
    return filters


def _shadow_only(rbac: Rbac) -> http_rbac_pb2.RBAC:
    return http_rbac_pb2.RBAC(
        shadow_rules=rbac_to_proto(rbac), shadow_rules_stat_prefix=rbac.shadow_prefix
    )


def rbac_filter_to_any(rbac: Rbac) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(rbac_filter_to_proto(rbac))
    return packed


def string_matcher_to_proto(m: StringMatcher) -> string_pb2.StringMatcher:
    out = string_pb2.StringMatcher(ignore_case=m.ignore_case)
    if m.kind is MatchKind.EXACT:
        out.exact = m.value
    elif m.kind is MatchKind.PREFIX:
        out.prefix = m.value
    elif m.kind is MatchKind.SUFFIX:
        out.suffix = m.value
    elif m.kind is MatchKind.CONTAINS:
        out.contains = m.value
    elif m.kind is MatchKind.REGEX:
        out.ignore_case = False
        regex = ("(?i)" + m.value) if m.ignore_case else m.value
        out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=regex))
    else:
        raise PolicyConfigError("matcher", f"{m.kind} has no StringMatcher form")
    return out


def _cidr(c: CidrRange) -> address_pb2.CidrRange:
    return address_pb2.CidrRange(
        address_prefix=c.address_prefix, prefix_len=wrappers_pb2.UInt32Value(value=c.prefix_len)
    )


def _header(h: HeaderMatcher) -> route_components_pb2.HeaderMatcher:
    out = route_components_pb2.HeaderMatcher(name=h.name, invert_match=h.invert)
    if h.matcher.kind is MatchKind.PRESENT:
        out.present_match = True
    else:
        out.string_match.CopyFrom(string_matcher_to_proto(h.matcher))
    return out


def _metadata(m: Metadata) -> metadata_pb2.MetadataMatcher:
    out = metadata_pb2.MetadataMatcher(filter=m.filter, invert=m.invert)
    out.path.extend(metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in m.path)
    if m.matcher.kind is MatchKind.PRESENT:
        out.value.present_match = True
        return out
    value = value_pb2.ValueMatcher(string_match=string_matcher_to_proto(m.matcher))
    if m.list_match:
        out.value.list_match.one_of.CopyFrom(value)
    else:
        out.value.CopyFrom(value)
    return out


def permission_to_proto(rule: RbacRule) -> rbac_pb2.Permission:
    out = rbac_pb2.Permission()
    if isinstance(rule, AnyRule):
        out.any = True
    elif isinstance(rule, AndRules):
        out.and_rules.rules.extend(permission_to_proto(r) for r in rule.rules)
    elif isinstance(rule, OrRules):
        out.or_rules.rules.extend(permission_to_proto(r) for r in rule.rules)
    elif isinstance(rule, NotRule):
        out.not_rule.CopyFrom(permission_to_proto(rule.rule))
    elif isinstance(rule, HeaderMatcher):
        out.header.CopyFrom(_header(rule))
    elif isinstance(rule, UrlPath):
        out.url_path.CopyFrom(path_pb2.PathMatcher(path=string_matcher_to_proto(rule.matcher)))
    elif isinstance(rule, DestinationPort):
        out.destination_port = rule.port
    elif isinstance(rule, DestinationPortRange):
        out.destination_port_range.CopyFrom(range_pb2.Int32Range(start=rule.start, end=rule.end))
    elif isinstance(rule, DestinationIp):
        out.destination_ip.CopyFrom(_cidr(rule.cidr))
    elif isinstance(rule, RequestedServerName):
        out.requested_server_name.CopyFrom(string_matcher_to_proto(rule.matcher))
    elif isinstance(rule, Metadata):
        out.metadata.CopyFrom(_metadata(rule))
    else:
        raise PolicyConfigError("permission", f"{type(rule).__name__} is a principal-only rule")
    return out


def principal_to_proto(rule: RbacRule) -> rbac_pb2.Principal:
    out = rbac_pb2.Principal()
    if isinstance(rule, AnyRule):
        out.any = True
    elif isinstance(rule, AndRules):
        out.and_ids.ids.extend(principal_to_proto(r) for r in rule.rules)
    elif isinstance(rule, OrRules):
        out.or_ids.ids.extend(principal_to_proto(r) for r in rule.rules)
    elif isinstance(rule, NotRule):
        out.not_id.CopyFrom(principal_to_proto(rule.rule))
    elif isinstance(rule, HeaderMatcher):
        out.header.CopyFrom(_header(rule))
    elif isinstance(rule, UrlPath):
        out.url_path.CopyFrom(path_pb2.PathMatcher(path=string_matcher_to_proto(rule.matcher)))
    elif isinstance(rule, Authenticated):
        out.authenticated.SetInParent()
        if rule.principal_name is not None:
            out.authenticated.principal_name.CopyFrom(string_matcher_to_proto(rule.principal_name))
    elif isinstance(rule, DirectRemoteIp):
        out.direct_remote_ip.CopyFrom(_cidr(rule.cidr))
    elif isinstance(rule, RemoteIp):
        out.remote_ip.CopyFrom(_cidr(rule.cidr))
    elif isinstance(rule, Metadata):
        out.metadata.CopyFrom(_metadata(rule))
    else:
        raise PolicyConfigError("principal", f"{type(rule).__name__} is a permission-only rule")
    return out


def jwt_authentication_to_proto(jwt: JwtAuthentication) -> jwt_pb2.JwtAuthentication:
    """The jwt_authn filter config with Istio's rule: every request, any one
    provider may validate the token, and a missing token is allowed
    (`requires_any: [provider..., allow_missing]`); a present token that no
    provider accepts fails. Provider map keys are the providers' names, made
    unique with `#<n>` when two share one (e.g. the same issuer twice)."""
    out = jwt_pb2.JwtAuthentication()
    requirements = []
    for i, provider in enumerate(jwt.providers):
        key = provider.name if provider.name not in out.providers else f"{provider.name}#{i}"
        out.providers[key].CopyFrom(jwt_provider_to_proto(provider))
        requirements.append(jwt_pb2.JwtRequirement(provider_name=key))
    requirements.append(jwt_pb2.JwtRequirement(allow_missing=empty_pb2.Empty()))
    rule = out.rules.add()
    rule.match.prefix = "/"
    rule.requires.requires_any.requirements.extend(requirements)
    return out


def jwt_provider_to_proto(p: JwtProvider) -> jwt_pb2.JwtProvider:
    out = jwt_pb2.JwtProvider(
        issuer=p.issuer,
        audiences=list(p.audiences),
        forward=p.forward,
        from_params=list(p.from_params),
        from_cookies=list(p.from_cookies),
        clock_skew_seconds=p.clock_skew_seconds,
        forward_payload_header=p.forward_payload_header,
    )
    out.local_jwks.inline_string = p.jwks
    if p.space_delimited_claims:
        out.normalize_payload_in_metadata.space_delimited_claims.extend(p.space_delimited_claims)
    out.from_headers.extend(
        jwt_pb2.JwtHeader(name=h.name, value_prefix=h.value_prefix) for h in p.from_headers
    )
    out.claim_to_headers.extend(
        jwt_pb2.JwtClaimToHeader(header_name=c.header_name, claim_name=c.claim_name)
        for c in p.claim_to_headers
    )
    return out
