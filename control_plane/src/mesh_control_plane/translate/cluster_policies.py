"""A DestinationRule's traffic policy on a Cluster, as Istio writes it for Envoy.

- loadBalancer.simple -> ``lb_policy``; consistentHash -> RING_HASH with
  ``ring_hash_lb_config`` or MAGLEV with ``maglev_lb_config`` (the hash key
  itself is a route ``hash_policy``, see route_policies.py);
  warmupDurationSecs -> ``{round_robin,least_request}_lb_config.slow_start_config``.
- outlierDetection -> ``outlier_detection`` (Istio's mapping: each consecutive
  detector that is written is enforced at 100 %, success-rate ejection is off)
  and ``common_lb_config.healthy_panic_threshold`` = minHealthPercent.
- connectionPool -> ``circuit_breakers.thresholds[0]`` (unset limits are
  Istio's "unlimited" 2^32-1), ``connect_timeout``, and
  ``HttpProtocolOptions.common_http_protocol_options``.
- Every cluster carries a retry budget (20 % of active requests, at least 3
  concurrent retries) so an outage cannot become a retry storm; an explicit
  ``http.maxRetries`` replaces it, because Envoy ignores max_retries when a
  budget is set and the operator's number must win.

gRPC (C-core) lacks least_request, random and maglev and NACKs a cluster naming
them: gRPC clients get ROUND_ROBIN for the first two and RING_HASH for maglev
(same keys, a different table), and no slow start, which it does not implement.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from mesh_control_plane.config.model import ConnectionPool, LoadBalancerSettings, OutlierDetection
from mesh_control_plane.translate.node import ClientKind
from mesh_control_plane.translate.policy import EffectivePolicy
from mesh_control_plane.translate.protos import duration, pack

CONNECT_TIMEOUT_SECONDS = 10.0
"""Istio's default. Envoy's own default is 5 s; gRPC ignores the field."""

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
UNLIMITED = 2**32 - 1
RETRY_BUDGET_PERCENT = 20.0
MIN_RETRY_CONCURRENCY = 3

_LB_POLICIES: dict[str, int] = {
    "ROUND_ROBIN": cluster_pb2.Cluster.ROUND_ROBIN,
    "RANDOM": cluster_pb2.Cluster.RANDOM,
    "LEAST_REQUEST": cluster_pb2.Cluster.LEAST_REQUEST,
}
_GRPC_LB_POLICIES: frozenset[int] = frozenset(
    {cluster_pb2.Cluster.ROUND_ROBIN, cluster_pb2.Cluster.RING_HASH}
)


def apply_policy(
    cluster: cluster_pb2.Cluster, policy: EffectivePolicy, kind: ClientKind, h2: bool
) -> None:
    """Write `policy` into `cluster` for a client of `kind`; `h2` says whether
    the port speaks HTTP/2 upstream (HTTP2/GRPC)."""
    _load_balancer(cluster, policy.load_balancer, kind)
    if policy.outlier_detection is not None:
        _outlier_detection(cluster, policy.outlier_detection)
    pool = policy.connection_pool or ConnectionPool()
    cluster.connect_timeout.CopyFrom(duration(pool.connect_timeout or CONNECT_TIMEOUT_SECONDS))
    cluster.circuit_breakers.thresholds.append(_thresholds(pool))
    common = pool.idle_timeout is not None or pool.max_requests_per_connection is not None
    if common or (kind is ClientKind.ENVOY and h2):
        # Envoy speaks HTTP/1.1 upstream unless told otherwise; gRPC backends need h2.
        # The options message needs an explicit protocol, so HTTP/1 ports name theirs.
        options = http_protocol_options_pb2.HttpProtocolOptions()
        if h2:
            options.explicit_http_config.http2_protocol_options.SetInParent()
        else:
            options.explicit_http_config.http_protocol_options.SetInParent()
        if pool.idle_timeout is not None:
            options.common_http_protocol_options.idle_timeout.CopyFrom(duration(pool.idle_timeout))
        if pool.max_requests_per_connection is not None:
            options.common_http_protocol_options.max_requests_per_connection.value = (
                pool.max_requests_per_connection
            )
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(pack(options))


def _load_balancer(
    cluster: cluster_pb2.Cluster, lb: LoadBalancerSettings | None, kind: ClientKind
) -> None:
    hashing = lb.consistent_hash if lb else None
    if hashing is not None:
        if hashing.maglev and kind is not ClientKind.GRPC:
            cluster.lb_policy = cluster_pb2.Cluster.MAGLEV
            if hashing.table_size is not None:
                cluster.maglev_lb_config.table_size.value = hashing.table_size
        else:
            cluster.lb_policy = cluster_pb2.Cluster.RING_HASH
            if hashing.minimum_ring_size is not None:
                cluster.ring_hash_lb_config.minimum_ring_size.value = hashing.minimum_ring_size
        return
    policy = _LB_POLICIES.get((lb.simple if lb else None) or "ROUND_ROBIN", 0)
    if kind is ClientKind.GRPC and policy not in _GRPC_LB_POLICIES:
        policy = cluster_pb2.Cluster.ROUND_ROBIN
    cluster.lb_policy = policy  # type: ignore[assignment]
    if lb is None or lb.warmup_duration is None or kind is ClientKind.GRPC:
        return
    if policy == cluster_pb2.Cluster.LEAST_REQUEST:
        slow_start = cluster.least_request_lb_config.slow_start_config
    else:
        slow_start = cluster.round_robin_lb_config.slow_start_config
    slow_start.slow_start_window.CopyFrom(duration(lb.warmup_duration))


def _outlier_detection(cluster: cluster_pb2.Cluster, od: OutlierDetection) -> None:
    out = outlier_detection_pb2.OutlierDetection()
    if od.consecutive_5xx_errors is not None:
        out.consecutive_5xx.value = od.consecutive_5xx_errors
        out.enforcing_consecutive_5xx.value = 100 if od.consecutive_5xx_errors else 0
    if od.consecutive_gateway_errors is not None:
        out.consecutive_gateway_failure.value = od.consecutive_gateway_errors
        out.enforcing_consecutive_gateway_failure.value = (
            100 if od.consecutive_gateway_errors else 0
        )
    if od.split_external_local_origin_errors:
        out.split_external_local_origin_errors = True
        if od.consecutive_local_origin_failures:
            out.consecutive_local_origin_failure.value = od.consecutive_local_origin_failures
            out.enforcing_consecutive_local_origin_failure.value = 100
        out.enforcing_local_origin_success_rate.value = 0
    if od.interval is not None:
        out.interval.CopyFrom(duration(od.interval))
    if od.base_ejection_time is not None:
        out.base_ejection_time.CopyFrom(duration(od.base_ejection_time))
    if od.max_ejection_percent is not None:
        out.max_ejection_percent.value = od.max_ejection_percent
    out.enforcing_success_rate.value = 0
    cluster.outlier_detection.CopyFrom(out)
    # Istio: with outlier detection on, panic mode starts below minHealthPercent (0: never).
    cluster.common_lb_config.healthy_panic_threshold.value = float(od.min_health_percent or 0)


def _thresholds(pool: ConnectionPool) -> circuit_breaker_pb2.CircuitBreakers.Thresholds:
    def limit(value: int | None) -> int:
        return UNLIMITED if value is None else value

    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds(priority=base_pb2.DEFAULT)
    thresholds.max_connections.value = limit(pool.max_connections)
    thresholds.max_pending_requests.value = limit(pool.http1_max_pending_requests)
    thresholds.max_requests.value = limit(pool.http2_max_requests)
    thresholds.max_retries.value = limit(pool.max_retries)
    if pool.max_retries is None:
        thresholds.retry_budget.budget_percent.value = RETRY_BUDGET_PERCENT
        thresholds.retry_budget.min_retry_concurrency.value = MIN_RETRY_CONCURRENCY
    return thresholds
