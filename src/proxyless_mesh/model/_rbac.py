"""Frozen dataclasses mirroring Envoy's RBAC (envoy.config.rbac.v3) and JWT
authentication (envoy.extensions.filters.http.jwt_authn.v3) configuration.

The shapes follow the protobufs one to one so that decoding the RBAC HTTP
filter from xDS, and encoding it in the control plane, are direct: a
`Permission` / `Principal` is a tree of and/or/not nodes over leaves, a
`Policy` matches when any permission and any principal match, and an `Rbac`
engine applies one action. Istio expresses ALLOW/DENY/AUDIT by emitting
several RBAC filters in a row; `Rbac` is one of them.

Envoy distinguishes Permission from Principal leaves (e.g. `authenticated` is
principal-only, `destination_port` permission-only). Both trees use the same
node classes here; the xDS converters check which side a leaf belongs to.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TypeAlias

from proxyless_mesh.model._resources import HeaderMatcher, StringMatcher


class RbacAction(enum.Enum):
    """envoy.config.rbac.v3.RBAC.Action (same names)."""

    ALLOW = "ALLOW"
    DENY = "DENY"
    LOG = "LOG"


@dataclass(frozen=True, slots=True)
class CidrRange:
    """envoy.config.core.v3.CidrRange: `address_prefix`/`prefix_len`."""

    address_prefix: str
    prefix_len: int


@dataclass(frozen=True, slots=True)
class AnyRule:
    """`any: true`: matches every request."""


@dataclass(frozen=True, slots=True)
class AndRules:
    """`and_rules` (Permission) / `and_ids` (Principal): all must match."""

    rules: tuple[RbacRule, ...]


@dataclass(frozen=True, slots=True)
class OrRules:
    """`or_rules` / `or_ids`: at least one must match."""

    rules: tuple[RbacRule, ...]


@dataclass(frozen=True, slots=True)
class NotRule:
    """`not_rule` / `not_id`: matches when the inner rule does not."""

    rule: RbacRule


@dataclass(frozen=True, slots=True)
class UrlPath:
    """`url_path`: the normalized path without query string."""

    matcher: StringMatcher


@dataclass(frozen=True, slots=True)
class DestinationPort:
    """`destination_port` (permission only)."""

    port: int


@dataclass(frozen=True, slots=True)
class DestinationPortRange:
    """`destination_port_range` (permission only): start inclusive, end exclusive."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class DestinationIp:
    """`destination_ip` (permission only)."""

    cidr: CidrRange


@dataclass(frozen=True, slots=True)
class RequestedServerName:
    """`requested_server_name` (permission only): the TLS SNI."""

    matcher: StringMatcher


@dataclass(frozen=True, slots=True)
class Authenticated:
    """`authenticated` (principal only): the verified peer certificate's URI SAN
    (the SPIFFE ID). `principal_name=None` matches any authenticated peer."""

    principal_name: StringMatcher | None = None


@dataclass(frozen=True, slots=True)
class DirectRemoteIp:
    """`direct_remote_ip` (principal only): the connection's peer address.
    Envoy's deprecated `source_ip` decodes to this too."""

    cidr: CidrRange


@dataclass(frozen=True, slots=True)
class RemoteIp:
    """`remote_ip` (principal only): the original client address. In-process
    there is no trusted X-Forwarded-For hop count, so it equals the peer."""

    cidr: CidrRange


@dataclass(frozen=True, slots=True)
class Metadata:
    """`metadata`: envoy.type.matcher.v3.MetadataMatcher over the dynamic
    metadata of `filter` at `path`. Istio puts JWT results under filter
    `istio_authn` with keys `request.auth.principal`, `request.auth.audiences`,
    `request.auth.presenter` and `request.auth.claims` (then claim names).

    `list_match=True` is ValueMatcher.list_match.one_of(string_match); a
    `StringMatcher` of kind PRESENT is ValueMatcher.present_match."""

    filter: str
    path: tuple[str, ...]
    matcher: StringMatcher
    list_match: bool = False
    invert: bool = False


# One node of a Permission or Principal tree. `HeaderMatcher` is the
# route-level matcher reused as is (Envoy uses config.route.v3.HeaderMatcher).
RbacRule: TypeAlias = (
    AnyRule
    | AndRules
    | OrRules
    | NotRule
    | HeaderMatcher
    | UrlPath
    | DestinationPort
    | DestinationPortRange
    | DestinationIp
    | RequestedServerName
    | Authenticated
    | DirectRemoteIp
    | RemoteIp
    | Metadata
)
Permission: TypeAlias = RbacRule
Principal: TypeAlias = RbacRule


@dataclass(frozen=True, slots=True)
class Policy:
    """envoy.config.rbac.v3.Policy: matches when any permission and any
    principal match (CEL conditions are not supported)."""

    permissions: tuple[Permission, ...]
    principals: tuple[Principal, ...]


@dataclass(frozen=True, slots=True)
class ExtAuthz:
    """Envoy's ext_authz HTTP filter as istiod writes it for an
    AuthorizationPolicy CUSTOM provider (MeshConfig `envoyExtAuthzHttp` /
    `envoyExtAuthzGrpc`): the authorizer at `target` (`host:port`) is asked
    over Envoy's HTTP check protocol or `envoy.service.auth.v3.Authorization/Check`.

    `allowed_headers` None sends every request header (else those plus Host,
    Method, Path, Content-Length and Authorization); `upstream_headers` are the
    authorizer's response headers the app gets on allow, `client_headers` those
    the client gets on deny. An unreachable authorizer (or a timeout) answers
    `status_on_error` unless `fail_open`."""

    target: str
    grpc: bool = False
    timeout: float = 600.0
    fail_open: bool = False
    status_on_error: int = 403
    path_prefix: str = ""
    allowed_headers: tuple[str, ...] | None = None
    upstream_headers: tuple[str, ...] = ()
    client_headers: tuple[str, ...] = ()

    @property
    def cluster(self) -> str:
        """The Envoy cluster of the authorizer (Istio's outbound cluster name)."""
        host, _, port = self.target.rpartition(":")
        return f"outbound|{port}||{host}"


@dataclass(frozen=True, slots=True)
class Rbac:
    """One RBAC HTTP filter's `rules`: an action and named policies (Envoy's
    map, kept in order). ALLOW with no policies denies everything.

    `shadow` marks the filter's `shadow_rules` (Istio's dry-run policies):
    evaluated and recorded, never deciding. `ext_authz` marks Istio's CUSTOM
    engine (an RBAC filter whose shadow rules enable the ext_authz filter after
    it): a request one of its policies matches is decided by that authorizer."""

    action: RbacAction
    policies: tuple[tuple[str, Policy], ...] = ()
    shadow: bool = False
    ext_authz: ExtAuthz | None = None

    @property
    def shadow_prefix(self) -> str:
        """Istio's `shadow_rules_stat_prefix` for this engine's action."""
        return f"istio_dry_run_{self.action.value.lower()}_"


@dataclass(frozen=True, slots=True)
class JwtHeader:
    """jwt_authn JwtHeader: the token is the value after `value_prefix`."""

    name: str
    value_prefix: str = ""


@dataclass(frozen=True, slots=True)
class ClaimToHeader:
    header_name: str
    claim_name: str


@dataclass(frozen=True, slots=True)
class JwtProvider:
    """jwt_authn JwtProvider with `local_jwks` (the JWKS JSON text; the
    control plane fetches `jwksUri` and inlines it, as istiod does).

    Empty `from_headers`, `from_params` and `from_cookies` mean Envoy's defaults: the
    `Authorization: Bearer` header and the `access_token` query parameter."""

    name: str
    issuer: str
    jwks: str
    audiences: tuple[str, ...] = ()
    from_headers: tuple[JwtHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()  # cookie names (Istio fromCookies)
    forward: bool = False
    claim_to_headers: tuple[ClaimToHeader, ...] = ()
    clock_skew_seconds: int = 60
    # Envoy forward_payload_header (Istio outputPayloadToHeader): the verified
    # token's payload, base64url without padding, is sent to the app in it.
    forward_payload_header: str = ""
    # Envoy normalize_payload_in_metadata.space_delimited_claims: these claims'
    # string values are split on spaces for RBAC (`request.auth.claims[...]`);
    # istiod sends `scope` and `permission` plus RequestAuthentication's
    # spaceDelimitedClaims.
    space_delimited_claims: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JwtAuthentication:
    """The providers Istio's RequestAuthentications yield for one workload, with
    Istio's rule: any one provider may validate, a missing token is allowed
    (then the request simply has no request principal)."""

    providers: tuple[JwtProvider, ...] = field(default=())
