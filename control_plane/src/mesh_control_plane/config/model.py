"""Typed, validated Istio configuration as the control plane holds it.

The loader (config/loader.py) turns YAML into these objects after strict
validation; the translator reads only these. Field names follow Istio's
networking.istio.io/v1 API, in snake_case.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .parse_cors import CorsPolicy, DirectResponse
    from .parse_gateway import Gateway, ParentRef, TcpRoute, TlsRoute
    from .parse_sidecar import Sidecar
    from .parse_telemetry import Telemetry
    from .workload_group import WorkloadGroup

from proxyless_mesh.model import ExtAuthz

from .errors import ConfigProblem


@dataclass(frozen=True)
class Meta:
    """Where a resource came from, for error messages and status."""

    kind: str
    name: str
    namespace: str
    file: str  # path relative to the config directory
    # metadata.annotations, sorted; not part of what identifies the resource
    annotations: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServicePort:
    number: int
    protocol: str  # HTTP | HTTP2 | GRPC | TCP (upper-cased)
    name: str
    target_port: int | None = None


@dataclass(frozen=True)
class WorkloadEndpoint:
    """One instance: a ServiceEntry endpoint or a WorkloadEntry spec."""

    address: str
    ports: Mapping[str, int] = field(default_factory=dict)  # port name -> port
    labels: Mapping[str, str] = field(default_factory=dict)
    locality: str = ""  # "region/zone/subzone", any part may be empty
    weight: int = 1
    network: str = ""
    service_account: str = ""
    health: str = "HEALTHY"
    """HEALTHY | UNHEALTHY | DRAINING (ENDPOINT_HEALTH). Static config is always
    HEALTHY; a dynamic source keeps an instance that is going away (stream lost,
    clean shutdown) with its status instead of dropping it, so clients learn that
    it is draining or unhealthy from EDS rather than from failed requests."""
    # Who runs it, as Istio names an endpoint's workload in telemetry: a
    # WorkloadEntry's name and namespace (set by the registry; a self-registered
    # member's: its WorkloadGroup's); "" for a ServiceEntry's inline endpoint.
    workload_name: str = ""
    namespace: str = ""


ENDPOINT_HEALTH = ("HEALTHY", "UNHEALTHY", "DRAINING")


@dataclass(frozen=True)
class ServiceEntry:
    meta: Meta
    hosts: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    addresses: tuple[str, ...] = ()  # virtual IPs: more names of the host for HTTP clients
    # Defaults for code that builds entries; YAML gets Istio's (NONE, MESH_EXTERNAL).
    resolution: str = "STATIC"
    location: str = "MESH_INTERNAL"
    endpoints: tuple[WorkloadEndpoint, ...] = ()
    workload_selector: Mapping[str, str] | None = None  # labels of WorkloadEntries
    export_to: tuple[str, ...] = ()  # Istio's exportTo; empty: everywhere (visibility.py)

    @property
    def passthrough(self) -> bool:
        """Resolution NONE or DNS without endpoints (NONE with endpoints is
        refused at load). Istio's NONE sends to the original destination
        address and DNS to what the host name resolves to; in-process there is
        no original destination, so both mean: the request goes to the host
        itself, by name, as DNS resolves it. Nothing is translated to xDS for
        such an entry. DNS with endpoints is a service: the control plane
        resolves the endpoints' names (registry/dns.py)."""
        return self.resolution != "STATIC" and not self.endpoints


@dataclass(frozen=True)
class WorkloadEntry:
    meta: Meta
    endpoint: WorkloadEndpoint


@dataclass(frozen=True)
class ConsistentHash:
    """Istio consistentHash: where the key comes from and which hash table.

    `key` is "header", "cookie", "source_ip" or "query_parameter"; `name` is
    the header (lower-case), cookie or query parameter name. `maglev` chooses
    a Maglev table (size `table_size`, None for Envoy's default) over a ring
    (`minimum_ring_size`, None for Envoy's default).
    """

    key: str
    name: str = ""
    cookie_path: str = ""
    cookie_ttl: float | None = None  # seconds
    maglev: bool = False
    minimum_ring_size: int | None = None
    table_size: int | None = None


@dataclass(frozen=True)
class LocalityRule:
    """One `distribute` entry (`to`: locality pattern -> weight) or one
    `failover` entry (`to`: {region: 0}, read by `to_region`)."""

    from_: str
    to: Mapping[str, int] = field(default_factory=dict)

    @property
    def to_region(self) -> str:
        return next(iter(self.to), "")


@dataclass(frozen=True)
class LocalityLbSetting:
    enabled: bool = True
    distribute: tuple[LocalityRule, ...] = ()
    failover: tuple[LocalityRule, ...] = ()
    failover_priority: tuple[str, ...] = ()  # label names, most important first


@dataclass(frozen=True)
class LoadBalancerSettings:
    simple: str | None = None  # ROUND_ROBIN | LEAST_REQUEST | RANDOM
    consistent_hash: ConsistentHash | None = None
    locality_lb_setting: LocalityLbSetting | None = None
    warmup_duration: float | None = None  # seconds (warmupDurationSecs)


@dataclass(frozen=True)
class OutlierDetection:
    """Istio OutlierDetection; None means "not written" (Istio/Envoy default)."""

    consecutive_5xx_errors: int | None = None
    consecutive_gateway_errors: int | None = None
    consecutive_local_origin_failures: int | None = None
    split_external_local_origin_errors: bool = False
    interval: float | None = None  # seconds
    base_ejection_time: float | None = None
    max_ejection_percent: int | None = None
    min_health_percent: int | None = None


@dataclass(frozen=True)
class ConnectionPool:
    """Istio connectionPool tcp/http settings, flattened; None = not written."""

    max_connections: int | None = None
    connect_timeout: float | None = None  # seconds
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None
    idle_timeout: float | None = None  # seconds


@dataclass(frozen=True)
class ClientTls:
    """DestinationRule `tls` (Istio ClientTLSSettings): ISTIO_MUTUAL (the mesh's
    certificates, peer SPIFFE IDs checked), DISABLE (plaintext), or TLS
    origination SIMPLE / MUTUAL with the operator's files (paths on the client) or,
    at gateways, a credentialName."""

    mode: str  # ISTIO_MUTUAL | DISABLE | SIMPLE | MUTUAL
    sni: str = ""
    ca_certificates: str = ""
    client_certificate: str = ""
    private_key: str = ""
    subject_alt_names: tuple[str, ...] = ()
    credential_name: str = ""  # gateways: SDS kubernetes://NAME (others use the files)


@dataclass(frozen=True)
class PortTrafficPolicy:
    """portLevelSettings[]: replaces the policy's fields of the same name on one port."""

    port: int
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTls | None = None


@dataclass(frozen=True)
class TrafficPolicy:
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    port_level_settings: tuple[PortTrafficPolicy, ...] = ()
    tls: ClientTls | None = None


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Mapping[str, str]
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True)
class DestinationRule:
    meta: Meta
    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    export_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class StringMatch:
    """Istio StringMatch: exactly one of exact / prefix / regex."""

    kind: str  # "exact" | "prefix" | "regex"
    value: str


@dataclass(frozen=True)
class HTTPMatchRequest:
    name: str = ""
    uri: StringMatch | None = None
    method: StringMatch | None = None
    headers: Mapping[str, StringMatch] = field(default_factory=dict)  # lower-case names
    ignore_uri_case: bool = False
    # Where the match applies: "mesh" and/or gateways "ns/name" (empty: all the
    # VirtualService's), and the listener port (None: any). Applied at translation.
    gateways: tuple[str, ...] = ()
    port: int | None = None


@dataclass(frozen=True)
class Destination:
    host: str
    subset: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class HTTPRouteDestination:
    destination: Destination
    weight: int = 0  # 0 with a single destination means 100


@dataclass(frozen=True)
class HTTPRetry:
    """Istio HTTPRetry. `retry_on` holds condition names; numbers written in
    retryOn are moved to `retriable_status_codes` (Istio's reading)."""

    attempts: int = 0  # 0 disables retries (Istio)
    per_try_timeout: float | None = None  # seconds
    retry_on: tuple[str, ...] = ()
    retriable_status_codes: tuple[int, ...] = ()
    retry_remote_localities: bool = False


@dataclass(frozen=True)
class FaultDelay:
    fixed_delay: float  # seconds
    percentage: float = 0.0  # 0..100; Istio: unset means no request is delayed


@dataclass(frozen=True)
class FaultAbort:
    percentage: float = 0.0  # 0..100; Istio: unset means no request is aborted
    http_status: int | None = None
    grpc_status: int | None = None  # numeric code (the YAML names it, e.g. UNAVAILABLE)


@dataclass(frozen=True)
class HTTPFaultInjection:
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True)
class Mirror:
    destination: Destination
    percentage: float = 100.0  # 0..100
    in_list: bool = False  # written in mirrors[] rather than as mirror (for messages)


@dataclass(frozen=True)
class HTTPRewrite:
    uri: str | None = None
    authority: str | None = None
    uri_regex: tuple[str, str] | None = None  # (match, rewrite)


@dataclass(frozen=True)
class HTTPRedirect:
    uri: str | None = None
    authority: str | None = None
    port: int | None = None
    scheme: str | None = None
    redirect_code: int = 301


@dataclass(frozen=True)
class HeaderOperations:
    set: tuple[tuple[str, str], ...] = ()  # lower-case names, sorted
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Headers:
    request: HeaderOperations = HeaderOperations()
    response: HeaderOperations = HeaderOperations()


@dataclass(frozen=True)
class HTTPRoute:
    """One http[] rule: forwarded (`route`) or answered with a `redirect` or
    a `direct_response`."""

    name: str = ""
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[HTTPRouteDestination, ...] = ()
    timeout: float | None = None  # seconds
    retries: HTTPRetry | None = None  # None: Istio's default policy applies
    fault: HTTPFaultInjection | None = None
    mirrors: tuple[Mirror, ...] = ()
    rewrite: HTTPRewrite | None = None
    redirect: HTTPRedirect | None = None
    headers: Headers = Headers()
    cors: CorsPolicy | None = None
    direct_response: DirectResponse | None = None
    delegate: tuple[str, str] | None = None  # (namespace, name) of the delegate VirtualService


@dataclass(frozen=True)
class VirtualService:
    meta: Meta
    hosts: tuple[str, ...]
    http: tuple[HTTPRoute, ...] = ()
    # "mesh" (the mesh's clients) and/or gateways as "namespace/name"; Istio's default is mesh
    gateways: tuple[str, ...] = ("mesh",)
    tls: tuple[TlsRoute, ...] = ()  # SNI routes: gateways only
    export_to: tuple[str, ...] = ()
    tcp: tuple[TcpRoute, ...] = ()  # port routes: gateways only
    # A Gateway API route's parents, maybe one listener each (gateway_api_attach.py binds)
    parent_refs: tuple[ParentRef, ...] = ()

    @property
    def for_mesh(self) -> bool:
        return "mesh" in self.gateways


@dataclass(frozen=True)
class PeerAuthentication:
    """security.istio.io PeerAuthentication: the inbound mTLS mode of the
    workloads it selects. `selector` None: every workload of the namespace (of
    the whole mesh in the root namespace). Modes are STRICT, PERMISSIVE,
    DISABLE or UNSET (inherit from the next less specific policy)."""

    meta: Meta
    selector: Mapping[str, str] | None = None
    mode: str = "UNSET"
    port_modes: Mapping[int, str] = field(default_factory=dict)  # portLevelMtls


@dataclass(frozen=True)
class AuthorizationPolicy:
    """security.istio.io AuthorizationPolicy. `spec` is kept as written: the
    loader has checked it with the library's translator
    (proxyless_mesh.policy), which the control plane reuses to build RBAC, so
    the two can never disagree on what a field means."""

    meta: Meta
    spec: Mapping[str, Any]

    def resource(self) -> dict[str, Any]:
        """The Kubernetes-style dict the library's translator reads (with the
        annotations: `istio.io/dry-run` changes what the policy does)."""
        metadata: dict[str, Any] = {"name": self.meta.name, "namespace": self.meta.namespace}
        if self.meta.annotations:
            metadata["annotations"] = dict(self.meta.annotations)
        return {"metadata": metadata, "spec": self.spec}


@dataclass(frozen=True)
class RequestAuthentication:
    """security.istio.io RequestAuthentication, kept as written (checked at load
    like AuthorizationPolicy)."""

    meta: Meta
    spec: Mapping[str, Any]

    def resource(self) -> dict[str, Any]:
        return {
            "metadata": {"name": self.meta.name, "namespace": self.meta.namespace},
            "spec": self.spec,
        }


DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_ROOT_NAMESPACE = "istio-system"


@dataclass(frozen=True)
class MeshSettings:
    """Mesh-wide settings that come from control-plane flags, not from YAML.

    `trust_domain` names workload identities (spiffe://<td>/ns/<ns>/sa/<sa>)
    and must be the CA's; `root_namespace` is Istio's: security policies there
    without a selector apply to the whole mesh (Istio's default istio-system).
    """

    trust_domain: str = DEFAULT_TRUST_DOMAIN
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    # Istio's meshConfig.pathNormalization for inbound authorization:
    # BASE | MERGE_SLASHES | DECODE_AND_MERGE_SLASHES (NONE is not offered:
    # matching unnormalized paths is how authorization gets bypassed).
    path_normalization: str = "BASE"
    # Istio's DNS domain suffix (istiod --domain): a short host `reviews` in a
    # VirtualService or DestinationRule means reviews.<namespace>.svc.<domain>.
    domain: str = DEFAULT_TRUST_DOMAIN
    # Istio's meshConfig.outboundTrafficPolicy.mode (ALLOW_ANY | REGISTRY_ONLY):
    # the flag, else the istio ConfigMap's (loader); the mesh default a Sidecar's
    # overrides; None: unset (Envoy: ALLOW_ANY, library clients: their own).
    outbound_policy: str | None = None


@dataclass(frozen=True)
class MeshConfig:
    """Everything loaded from the config directory, in a stable order
    (by namespace, then name) so translation is deterministic."""

    service_entries: tuple[ServiceEntry, ...] = ()
    workload_entries: tuple[WorkloadEntry, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    virtual_services: tuple[VirtualService, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    request_authentications: tuple[RequestAuthentication, ...] = ()
    settings: MeshSettings = MeshSettings()
    # Last, so positional construction of the fields above is unchanged.
    workload_groups: tuple[WorkloadGroup, ...] = ()
    telemetries: tuple[Telemetry, ...] = ()
    # What loads but does not resolve yet (see references.reference_warnings).
    warnings: tuple[ConfigProblem, ...] = ()
    # ServiceEntries whose requests go to the host itself (ServiceEntry.passthrough):
    # not in service_entries, so nothing routes or balances them.
    passthrough_entries: tuple[ServiceEntry, ...] = ()
    gateways: tuple[Gateway, ...] = ()
    sidecars: tuple[Sidecar, ...] = ()  # parse_sidecar: each workload's egress scope
    # The mesh config's extension providers (AuthorizationPolicy CUSTOM): dict() it.
    extension_providers: tuple[tuple[str, ExtAuthz], ...] = ()
