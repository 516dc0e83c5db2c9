"""Istio's standard request metrics (and the mesh's identity metrics) through
the OpenTelemetry metrics API: the path for applications that export with
their own SDK pipeline. The same request metrics are also kept natively and
read on a scrape (_stats.py); the label-set bound (`bounded`) is shared.

Names, units and labels are Istio's, so existing Prometheus dashboards and
alerts work unchanged. Instruments are created once per Telemetry; label
dictionaries are built once per distinct label tuple and reused, so the
per-request cost is a dict lookup plus four instrument calls.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from proxyless_mesh.telemetry._labels import UNKNOWN

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter

    from proxyless_mesh.telemetry._config import TelemetryConfig
    from proxyless_mesh.telemetry._policy import SidePolicy

#: Istio's standard labels, in the order the label tuples carry them.
LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "source_canonical_service",
    "source_canonical_revision",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "connection_security_policy",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
)
# Labels whose values a peer or a Host header can choose (everything naming
# a workload or service, both sides): these collapse to "unknown" once the
# label-set bound is reached.
_PEER_CHOSEN = (1, 2, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18, 19)
# Istio's default histogram buckets (milliseconds; bytes).
DURATION_BUCKETS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)  # fmt: skip
BYTES_BUCKETS = tuple(float(1 << (2 * i)) for i in range(0, 13))  # 1 B .. 16 MiB

LabelValues = tuple[str, ...]


def bounded(values: LabelValues, known: Collection[LabelValues], limit: int) -> LabelValues:
    """The label values a request is counted under: its own while they are
    `known` or fewer than `limit` sets are, else with the peer-chosen labels
    collapsed to "unknown" (the cardinality guard; both the native and the
    OpenTelemetry path apply it, each to the sets it has seen)."""
    if len(known) < limit or values in known:
        return values
    collapsed = list(values)
    for i in _PEER_CHOSEN:
        collapsed[i] = UNKNOWN
    return tuple(collapsed)


@functools.cache
def build_tag() -> str:
    """istio_build's `tag`: this library's version."""
    try:
        return version("proxyless-mesh")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return UNKNOWN


class IstioMetrics:
    """The request instruments (four, and two more for gRPC) and a cache of
    prepared label sets."""

    def __init__(self, meter: Meter, *, max_label_sets: int = 2048) -> None:
        self.requests = meter.create_counter(
            "istio_requests_total", unit="1", description="Requests, by Istio's labels"
        )
        self.duration = meter.create_histogram(
            "istio_request_duration_milliseconds",
            unit="ms",
            description="Request duration to the last byte",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.request_bytes = meter.create_histogram(
            "istio_request_bytes",
            unit="By",
            description="Request body size",
            explicit_bucket_boundaries_advisory=BYTES_BUCKETS,
        )
        self.response_bytes = meter.create_histogram(
            "istio_response_bytes",
            unit="By",
            description="Response body size",
            explicit_bucket_boundaries_advisory=BYTES_BUCKETS,
        )
        # Istio's gRPC message counts (its proxies' grpc_stats filter): every
        # gRPC call adds its messages each way, 1 and 1 for a unary call.
        self.request_messages = meter.create_counter(
            "istio_request_messages_total", unit="1", description="gRPC messages sent by clients"
        )
        self.response_messages = meter.create_counter(
            "istio_response_messages_total", unit="1", description="gRPC messages sent by servers"
        )
        meter.create_observable_gauge(
            "istio_build",
            callbacks=[_build_observation],
            unit="1",
            description="The proxy's build: component and tag (the library version)",
        )
        self._histograms = {
            "istio_request_duration_milliseconds": self.duration,
            "istio_request_bytes": self.request_bytes,
            "istio_response_bytes": self.response_bytes,
        }
        self._message_counters = {
            "istio_request_messages_total": self.request_messages,
            "istio_response_messages_total": self.response_messages,
        }
        self._sets: dict[LabelValues, dict[str, str]] = {}
        self._max = max_label_sets
        self._made = self._instruments()

    def _instruments(self) -> tuple[object, ...]:
        return (
            self.requests,
            self.duration,
            self.request_bytes,
            self.response_bytes,
            self.request_messages,
            self.response_messages,
        )

    def wanted(self, provider_records: bool) -> bool:
        """Is a record worth making? Not while the meter provider is the
        API's no-op or unbound proxy (`provider_records` False) and the
        instruments are still the ones it handed out: they would drop it.
        An instrument swapped in since (a wrapper, a test double) is called."""
        if provider_records:
            return True
        made = self._made  # identity per instrument: no tuple built per request
        return (
            self.requests is not made[0]
            or self.duration is not made[1]
            or self.request_bytes is not made[2]
            or self.response_bytes is not made[3]
            or self.request_messages is not made[4]
            or self.response_messages is not made[5]
        )

    def attributes(self, values: LabelValues) -> dict[str, str]:
        """The prepared attribute dict for these label values (in LABELS order)."""
        prepared = self._sets.get(values)
        if prepared is not None:
            return prepared
        values = bounded(values, self._sets, self._max)
        prepared = self._sets.get(values)
        if prepared is not None:
            return prepared
        prepared = dict(zip(LABELS, values, strict=True))
        # A benign race: two threads may both build the same dict; either is fine.
        self._sets[values] = prepared
        return prepared

    def record(
        self,
        values: LabelValues,
        duration_ms: float,
        request_bytes: int,
        response_bytes: int,
        policy: SidePolicy | None = None,
        messages: tuple[int, int] | None = None,
    ) -> None:
        """One request; `messages` (request, response) for a gRPC call."""
        attributes = self.attributes(values)
        if policy is not None and (policy.disabled_metrics or policy.tag_overrides):
            self._record_with(
                policy, attributes, duration_ms, request_bytes, response_bytes, messages
            )
            return
        self.requests.add(1, attributes)
        self.duration.record(duration_ms, attributes)
        self.request_bytes.record(request_bytes, attributes)
        self.response_bytes.record(response_bytes, attributes)
        if messages is not None:
            self.request_messages.add(messages[0], attributes)
            self.response_messages.add(messages[1], attributes)

    def _record_with(
        self,
        policy: SidePolicy,
        attributes: dict[str, str],
        duration_ms: float,
        request_bytes: int,
        response_bytes: int,
        messages: tuple[int, int] | None,
    ) -> None:
        """The Telemetry API's metric overrides: disabled metrics, tags
        removed or set (the rewritten label dicts are cached by the policy)."""
        values: list[tuple[str, float]] = [
            ("istio_requests_total", 1),
            ("istio_request_duration_milliseconds", duration_ms),
            ("istio_request_bytes", request_bytes),
            ("istio_response_bytes", response_bytes),
        ]
        if messages is not None:
            values += [
                ("istio_request_messages_total", messages[0]),
                ("istio_response_messages_total", messages[1]),
            ]
        for name, value in values:
            if name in policy.disabled_metrics:
                continue
            labels = policy.labels(name, attributes) if policy.tag_overrides else attributes
            if name == "istio_requests_total":
                self.requests.add(1, labels)
            elif name in self._message_counters:
                self._message_counters[name].add(value, labels)
            else:
                self._histograms[name].record(value, labels)


def _build_observation(options: CallbackOptions) -> Iterable[Observation]:
    return [_BUILD]


#: Istio's build gauge, as its proxies report it (value 1).
_BUILD = Observation(1, {"component": "proxy", "tag": build_tag()})


#: The workload identity's signals (not Istio's: Envoy's nearest is
#: `server.days_until_first_cert_expiring`, too coarse for hour-long leaves).
CERT_EXPIRY_GAUGE = "mesh_workload_cert_expiry_seconds"
CERT_RENEWAL_FAILURES = "mesh_workload_cert_renewal_failures_total"


class IdentityMetrics:
    """Seconds until this workload's certificate expires (an observable
    gauge, negative once expired, so `< 600` is a ready-made alert) and the
    count of failed renewals. The gauge is read only when a metric reader
    collects: with the API alone (no SDK) it costs nothing, not even a clock
    read. `expires_in` returns None when there is no certificate (nothing is
    reported then)."""

    def __init__(
        self, meter: Meter, spiffe_id: str, expires_in: Callable[[], float | None]
    ) -> None:
        self._attributes = {"spiffe_id": spiffe_id}
        self._expires_in = expires_in
        self.closed = False
        meter.create_observable_gauge(
            CERT_EXPIRY_GAUGE,
            callbacks=[self._observe],
            unit="s",
            description="Seconds until the workload certificate expires (negative: expired)",
        )
        self.renewal_failures = meter.create_counter(
            CERT_RENEWAL_FAILURES, unit="1", description="Failed workload certificate renewals"
        )

    def renewal_failed(self) -> None:
        self.renewal_failures.add(1, self._attributes)

    def close(self) -> None:
        """Stop reporting: the API cannot unregister a callback, so a closed
        identity reports nothing rather than a certificate nobody uses."""
        self.closed = True

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        value = None if self.closed else self._expires_in()
        return [] if value is None else [Observation(value, self._attributes)]


#: Each cluster's circuit-breaker numbers, by Envoy's stat names (cluster_name label).
CLUSTER_RQ_ACTIVE = "envoy_cluster_upstream_rq_active"
CLUSTER_RQ_PENDING_ACTIVE = "envoy_cluster_upstream_rq_pending_active"
CLUSTER_RQ_PENDING_OVERFLOW = "envoy_cluster_upstream_rq_pending_overflow"
CLUSTER_RQ_RETRY_OVERFLOW = "envoy_cluster_upstream_rq_retry_overflow"
#: (active, pending, active retries, request overflows, retry overflows)
ClusterCounts = tuple[int, int, int, int, int]


class ClusterLimitMetrics:
    """The clusters' circuit-breaker counters, read when a metric reader
    collects (`counts()` gives each cluster's name and numbers): requests
    add nothing per request here, the counters are kept where admission
    keeps them (natively with the Rust core)."""

    def __init__(self, meter: Meter, counts: Callable[[], Iterable[tuple[str, ClusterCounts]]]):
        self._counts = counts
        for name, index, description in (
            (CLUSTER_RQ_ACTIVE, 0, "Requests in flight (Envoy upstream_rq_active)"),
            (
                CLUSTER_RQ_PENDING_ACTIVE,
                1,
                "Requests waiting for a slot (upstream_rq_pending_active)",
            ),
        ):
            meter.create_observable_up_down_counter(
                name, callbacks=[self._observer(index)], unit="1", description=description
            )
        for name, index, description in (
            (CLUSTER_RQ_PENDING_OVERFLOW, 3, "Requests refused by the circuit breakers (UO)"),
            (CLUSTER_RQ_RETRY_OVERFLOW, 4, "Retries refused by max_retries or the retry budget"),
        ):
            meter.create_observable_counter(
                name, callbacks=[self._observer(index)], unit="1", description=description
            )

    def _observer(self, index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(numbers[index], {"cluster_name": cluster})
                for cluster, numbers in self._counts()
            ]

        return observe


def metrics_meter(config: TelemetryConfig) -> Meter | None:
    """The meter the mesh's own (non-request) metrics use: the configured
    provider's, the global one's by default, None with metrics off."""
    if not config.metrics:
        return None
    provider = config.meter_provider or metrics.get_meter_provider()
    return provider.get_meter("proxyless_mesh")
