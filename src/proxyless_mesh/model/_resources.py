"""Frozen dataclasses mirroring the parts of LDS/RDS/CDS/EDS the mesh uses.

Field meanings follow Envoy's v3 API; only what the mesh implements is here.
A field that is absent in the protobuf takes the Envoy default.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxyless_mesh.model._security import UpstreamTls


class HealthStatus(enum.IntEnum):
    """Endpoint health as EDS reports it (same numbers as envoy.config.core.v3)."""

    UNKNOWN = 0
    HEALTHY = 1
    UNHEALTHY = 2
    DRAINING = 3
    TIMEOUT = 4
    DEGRADED = 5


class LbPolicy(enum.Enum):
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"
    RING_HASH = "RING_HASH"
    MAGLEV = "MAGLEV"


class MatchKind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    CONTAINS = "contains"
    REGEX = "regex"  # RE2 syntax on the wire; matched as a full match
    PRESENT = "present"


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    sub_zone: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int
    weight: int = 1
    health: HealthStatus = HealthStatus.UNKNOWN
    # Istio's endpoint telemetry metadata (`istio` filter metadata, key
    # `workload`): "name;namespace;canonical service;canonical revision;cluster",
    # "" without. It names the destination of a request no server answered.
    workload: str = ""


@dataclass(frozen=True, slots=True)
class LocalityEndpoints:
    locality: Locality
    endpoints: tuple[Endpoint, ...]
    weight: int = 1
    priority: int = 0


@dataclass(frozen=True, slots=True)
class ClusterLoadAssignment:
    cluster_name: str
    localities: tuple[LocalityEndpoints, ...]
    # policy.overprovisioning_factor, in percent (Envoy default 140): how far
    # a priority may degrade before traffic spills to the next one.
    overprovisioning_factor: int = 140


@dataclass(frozen=True, slots=True)
class RingHashConfig:
    minimum_ring_size: int = 1024
    maximum_ring_size: int = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class MaglevConfig:
    table_size: int = 65537  # must be prime


@dataclass(frozen=True, slots=True)
class SlowStartConfig:
    """Envoy slow_start_config: a new endpoint's weight ramps over `window`
    seconds; effective weight = weight * max(min_weight_percent/100,
    (time_since_start / window) ** (1 / aggression))."""

    window: float
    aggression: float = 1.0
    min_weight_percent: float = 10.0


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Envoy OutlierDetection (durations in seconds). A `None` threshold is a
    detector that is off. Istio maps consecutive5xxErrors to consecutive_5xx,
    consecutiveGatewayErrors to consecutive_gateway_failure, and
    consecutiveLocalOriginFailures to consecutive_local_origin_failure."""

    consecutive_5xx: int | None = 5
    consecutive_gateway_failure: int | None = None
    consecutive_local_origin_failure: int | None = None
    split_external_local_origin_errors: bool = False
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Envoy circuit_breakers.thresholds.retry_budget: active retries may be
    at most `budget_percent` of active requests, but `min_retry_concurrency`
    retries are always allowed."""

    budget_percent: float = 20.0
    min_retry_concurrency: int = 3


@dataclass(frozen=True, slots=True)
class CircuitBreakers:
    """Envoy's default-priority thresholds (Envoy's defaults)."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    retry_budget: RetryBudget | None = None


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    eds_service_name: str  # the ClusterLoadAssignment to watch (the cluster name when unset)
    lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN
    ring_hash: RingHashConfig | None = None  # set when lb_policy is RING_HASH
    maglev: MaglevConfig | None = None  # set when lb_policy is MAGLEV
    slow_start: SlowStartConfig | None = None
    outlier_detection: OutlierDetection | None = None
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    # common_lb_config.healthy_panic_threshold (percent): below this share of
    # healthy endpoints, balance over all of them (Istio: minHealthPercent).
    panic_threshold: float = 50.0
    connect_timeout: float = 10.0
    idle_timeout: float | None = None  # HttpProtocolOptions.common_http_protocol_options
    max_requests_per_connection: int | None = None
    # transport_socket: mutual TLS with these expectations; None is plaintext.
    tls: UpstreamTls | None = None


@dataclass(frozen=True, slots=True)
class StringMatcher:
    kind: MatchKind
    value: str = ""
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class HeaderMatcher:
    """A header condition. Names are lower-case; `:method`, `:authority`,
    `:path` and `:scheme` are the pseudo-headers, as in Envoy."""

    name: str
    matcher: StringMatcher
    invert: bool = False


@dataclass(frozen=True, slots=True)
class PathMatcher:
    """Envoy's RouteMatch path specifier: PREFIX (`prefix`), EXACT (`path`) or
    REGEX (`safe_regex`), against the path without the query string."""

    kind: MatchKind
    value: str
    case_sensitive: bool = True


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path: PathMatcher
    headers: tuple[HeaderMatcher, ...] = ()


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    name: str
    weight: int


class HashPolicyKind(enum.Enum):
    HEADER = "header"
    COOKIE = "cookie"
    SOURCE_IP = "source_ip"
    QUERY_PARAMETER = "query_parameter"


@dataclass(frozen=True, slots=True)
class HashPolicy:
    """Envoy RouteAction.HashPolicy: where a consistent-hash key comes from.
    `name` is the header (lower-case), cookie or query parameter name. For a
    cookie with a `cookie_ttl`, the mesh sets the cookie when it is absent."""

    kind: HashPolicyKind
    name: str = ""
    cookie_path: str = ""
    cookie_ttl: float | None = None
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Envoy RetryPolicy. `retry_on` holds Envoy's condition names (`5xx`,
    `gateway-error`, `reset`, `connect-failure`, `refused-stream`,
    `retriable-4xx`, `retriable-status-codes`, `retriable-headers`, and the
    gRPC ones `cancelled`, `deadline-exceeded`, `internal`,
    `resource-exhausted`, `unavailable`). Durations in seconds."""

    retry_on: frozenset[str]
    num_retries: int = 1
    per_try_timeout: float | None = None
    retriable_status_codes: tuple[int, ...] = ()
    retriable_headers: tuple[HeaderMatcher, ...] = ()
    base_interval: float = 0.025
    max_interval: float = 0.25
    retry_other_hosts: bool = True  # retry_host_predicate previous_hosts
    # retry_priority previous_priorities (Istio retryRemoteLocalities)
    retry_other_priorities: bool = False


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    cluster: str
    fraction: float = 1.0  # 0..1 of requests copied


@dataclass(frozen=True, slots=True)
class RegexRewrite:
    pattern: str  # RE2; every match is replaced
    substitution: str


@dataclass(frozen=True, slots=True)
class RouteAction:
    """Where a matched request goes: one cluster (a single WeightedCluster) or
    a weighted split. `timeout` is in seconds; None means no route timeout."""

    clusters: tuple[WeightedCluster, ...]
    timeout: float | None = None
    retry_policy: RetryPolicy | None = None
    hash_policies: tuple[HashPolicy, ...] = ()
    mirrors: tuple[MirrorPolicy, ...] = ()
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None
    host_rewrite: str | None = None  # host_rewrite_literal (Istio rewrite.authority)


@dataclass(frozen=True, slots=True)
class RedirectAction:
    """Envoy RedirectAction; None fields keep the request's own value."""

    response_code: int = 301
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None
    prefix_rewrite: str | None = None


@dataclass(frozen=True, slots=True)
class DirectResponse:
    """Envoy DirectResponseAction: the route answers the request itself."""

    status: int
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Envoy CorsPolicy (the route's `envoy.filters.http.cors` config). The
    header values are as Envoy sends them (Istio joins the lists with ",")."""

    allow_origins: tuple[StringMatcher, ...] = ()
    allow_methods: str = ""
    allow_headers: str = ""
    expose_headers: str = ""
    max_age: str = ""
    allow_credentials: bool = False
    forward_not_matching_preflights: bool = True


@dataclass(frozen=True, slots=True)
class FaultDelay:
    delay: float  # seconds
    percentage: float  # 0..100


@dataclass(frozen=True, slots=True)
class FaultAbort:
    percentage: float  # 0..100
    http_status: int | None = None
    grpc_status: int | None = None


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Envoy HTTPFault (per route, from typed_per_filter_config)."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True, slots=True)
class HeaderMutation:
    """Headers to set (replace), add (append) and remove, Envoy-style."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: RouteMatch
    action: RouteAction | None  # None: not forwarded (see redirect), else NR
    redirect: RedirectAction | None = None
    fault: FaultConfig | None = None
    request_headers: HeaderMutation = HeaderMutation()
    response_headers: HeaderMutation = HeaderMutation()
    direct_response: DirectResponse | None = None
    cors: CorsPolicy | None = None


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class RouteConfiguration:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]


@dataclass(frozen=True, slots=True)
class Listener:
    """A client-side (api_listener) Listener: where its routes come from."""

    name: str
    rds_name: str | None = None
    inline_routes: RouteConfiguration | None = None
    # The Telemetry API specs that apply to this workload, as JSON (node-scoped
    # listener metadata, see xds_client/_decode.telemetry_metadata).
    telemetry: str | None = None
    # On the OUTBOUND_POLICY_LISTENER only: the mode the workload's Sidecar sets.
    outbound_policy: str | None = None
