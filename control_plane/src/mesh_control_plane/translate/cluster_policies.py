"""A DestinationRule's traffic policy on a Cluster, as Istio writes it for Envoy.

- loadBalancer.simple -> ``lb_policy``; consistentHash -> RING_HASH with
  ``ring_hash_lb_config`` or MAGLEV with ``maglev_lb_config`` (the hash key
  itself is a route ``hash_policy``, see route_policies.py);
  warmupDurationSecs -> ``{round_robin,least_request}_lb_config.slow_start_config``.
- outlierDetection -> ``outlier_detection`` (Istio's mapping: each consecutive
  detector that is written is enforced at 100 %, success-rate ejection is off)
  and ``common_lb_config.healthy_panic_threshold`` = minHealthPercent; gRPC
  clients also get a failure-percentage approximation (``_grpc_failure_percentage``).
- connectionPool -> ``circuit_breakers.thresholds[0]`` (unset limits are
  Istio's "unlimited" 2^32-1), ``connect_timeout``, and
  ``HttpProtocolOptions.common_http_protocol_options``.
- localityLbSetting -> ``common_lb_config.locality_weighted_lb_config`` for Envoy
  when the locality weights of the assignment carry intent (``_locality_weighted``).
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
ISTIO_CONSECUTIVE_5XX_DEFAULT = 5
GRPC_FAILURE_PERCENTAGE_THRESHOLD = 85
"""gRPC ejects a host whose failure percentage in an interval is above this."""

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
        _outlier_detection(cluster, policy.outlier_detection, kind)
    if kind is ClientKind.ENVOY and _locality_weighted(policy):
        cluster.common_lb_config.locality_weighted_lb_config.SetInParent()
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


def _locality_weighted(policy: EffectivePolicy) -> bool:
    """Whether Envoy must pick localities by their EDS ``load_balancing_weight``.

    Envoy ignores locality weights unless the cluster turns on locality weighted
    load balancing: without it, a ``distribute`` of 80/20 becomes a flat pick over
    all hosts of the priority. Istio turns it on (and so do we) when ``distribute``
    is written, or when explicit ``failover``/``failoverPriority`` rules apply (they
    apply only with outlier detection, see endpoints._priority); a plain enabled
    setting keeps Envoy's flat pick, as Istio's default does. The oneof excludes
    zone aware routing, which we never set.

    Every LB policy we emit honours it: ROUND_ROBIN, LEAST_REQUEST and RANDOM pick a
    locality first; RING_HASH and MAGLEV (Envoy's thread-aware balancers) read the
    flag from ``common_lb_config`` and scale each host's share on the ring/table by its
    locality's weight. Envoy 1.40 validates all five (test_envoy_locality_weighted).
    gRPC and our library always weight localities and never read the field, so
    their output stays as it was.
    """
    lb = policy.load_balancer
    setting = lb.locality_lb_setting if lb else None
    if setting is None or not setting.enabled:
        return False
    if setting.distribute:
        return True
    failover = bool(setting.failover or setting.failover_priority)
    return failover and policy.outlier_detection is not None


def _outlier_detection(
    cluster: cluster_pb2.Cluster, od: OutlierDetection, kind: ClientKind
) -> None:
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
    if kind is ClientKind.GRPC:
        _grpc_failure_percentage(out, od)
    cluster.outlier_detection.CopyFrom(out)
    # Istio: with outlier detection on, panic mode starts below minHealthPercent (0: never).
    cluster.common_lb_config.healthy_panic_threshold.value = float(od.min_health_percent or 0)


def consecutive_errors(od: OutlierDetection) -> int | None:
    """The smallest enabled consecutive-error count of `od`, None when every
    consecutive detector is off. An unwritten consecutive5xxErrors is Istio's
    (and Envoy's) default of 5, enforced at 100 %; 0 turns a detector off."""
    counts = [
        ISTIO_CONSECUTIVE_5XX_DEFAULT
        if od.consecutive_5xx_errors is None
        else od.consecutive_5xx_errors,
        od.consecutive_gateway_errors or 0,
    ]
    enabled = [n for n in counts if n > 0]
    return min(enabled) if enabled else None


def _grpc_failure_percentage(
    out: outlier_detection_pb2.OutlierDetection, od: OutlierDetection
) -> None:
    """Istio's consecutive-error detectors, restated as the failure-percentage
    algorithm that grpcio (gRFC A50) implements. A50 ignores ``consecutive_*``
    (they are defined on HTTP codes) and runs failure-percentage ejection only
    when ``enforcing_failure_percentage`` is set and non-zero, so without this a
    gRPC client ACKs the rule and never ejects anyone.

    The semantics differ, and the approximation is stated here:

    - Envoy ejects a host inline, the moment it returns N errors in a row.
      A50 counts each host's calls per ``interval`` and, when the timer fires,
      ejects a host that had at least ``request_volume`` calls of which MORE
      than ``threshold`` percent failed (C-core compares strictly). We send
      request_volume = N and threshold = 85 (the xDS default): a host that
      failed all of its N or more calls in an interval is ejected at the end of
      that interval, not at the N-th error; a host failing intermittently (say
      50 %), which Envoy would eventually eject after N unlucky calls in a row,
      is not ejected by gRPC; and a host with fewer than N calls in an interval
      is never judged.
    - ``minimum_hosts`` = 1: A50 compares it with the number of hosts that
      reached the request volume (default 5 would switch the algorithm off in
      every small cluster); consecutive detectors judge each host alone too.
      ``max_ejection_percent`` still caps ejections, except that A50, like
      Envoy, always allows the first one.
    - What is a failure: A50 counts every non-OK status (NOT_FOUND,
      PERMISSION_DENIED and INVALID_ARGUMENT included). Envoy maps a gRPC
      status to an HTTP code for its detector, so consecutive5xxErrors counts
      only server-error statuses (UNKNOWN, INTERNAL, UNIMPLEMENTED,
      UNAVAILABLE, DEADLINE_EXCEEDED, DATA_LOSS) and consecutiveGatewayErrors
      only UNAVAILABLE and DEADLINE_EXCEEDED (503/504).
    - A50 runs per priority, not per cluster; interval, baseEjectionTime and
      maxEjectionPercent are the fields both read.
    """
    errors = consecutive_errors(od)
    if errors is None:
        return
    out.failure_percentage_threshold.value = GRPC_FAILURE_PERCENTAGE_THRESHOLD
    out.enforcing_failure_percentage.value = 100
    out.failure_percentage_minimum_hosts.value = 1
    out.failure_percentage_request_volume.value = errors


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
