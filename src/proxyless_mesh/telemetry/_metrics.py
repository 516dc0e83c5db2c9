"""Istio's standard request metrics through the OpenTelemetry metrics API.

Names, units and labels are Istio's, so existing Prometheus dashboards and
alerts work unchanged. Instruments are created once per Telemetry; label
dictionaries are built once per distinct label tuple and reused, so the
per-request cost is a dict lookup plus four instrument calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxyless_mesh.telemetry._config import UNKNOWN

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter

LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_workload",
    "destination_principal",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
# Labels whose values a peer or a Host header can choose: these collapse to
# "unknown" once the label-set bound is reached.
_PEER_CHOSEN = (1, 2, 4, 5, 6, 7)
# Istio's default histogram buckets (milliseconds; bytes).
DURATION_BUCKETS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)  # fmt: skip
BYTES_BUCKETS = tuple(float(1 << (2 * i)) for i in range(0, 13))  # 1 B .. 16 MiB

LabelValues = tuple[str, ...]


class IstioMetrics:
    """The four instruments and a cache of prepared label sets."""

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
        self._sets: dict[LabelValues, dict[str, str]] = {}
        self._max = max_label_sets

    def attributes(self, values: LabelValues) -> dict[str, str]:
        """The prepared attribute dict for these label values (in LABELS order)."""
        prepared = self._sets.get(values)
        if prepared is not None:
            return prepared
        if len(self._sets) >= self._max:
            bounded = list(values)
            for i in _PEER_CHOSEN:
                bounded[i] = UNKNOWN
            values = tuple(bounded)
            prepared = self._sets.get(values)
            if prepared is not None:
                return prepared
        prepared = dict(zip(LABELS, values, strict=True))
        # A benign race: two threads may both build the same dict; either is fine.
        self._sets[values] = prepared
        return prepared

    def record(
        self, values: LabelValues, duration_ms: float, request_bytes: int, response_bytes: int
    ) -> None:
        attributes = self.attributes(values)
        self.requests.add(1, attributes)
        self.duration.record(duration_ms, attributes)
        self.request_bytes.record(request_bytes, attributes)
        self.response_bytes.record(response_bytes, attributes)
