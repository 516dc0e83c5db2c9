"""Istio's request metrics kept in the native core and read on a scrape, as
an Envoy sidecar keeps its stats: always on (no SDK needed), one native call
per request, the Prometheus text rendered when asked (`Telemetry.
prometheus_text()`, the mesh admin endpoint's `/stats/prometheus`).

A request's label values (the same tuple the OpenTelemetry path records)
map to a native label-group id, registered once per distinct tuple and per
Telemetry API side policy: the group carries, for each metric, the labels
after that policy's overrides, or nothing when the policy disables it. The
label-set bound is the OpenTelemetry path's (`bounded`), so both paths count
the same requests under the same labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from proxyless_mesh import native_core
from proxyless_mesh.telemetry._metrics import (
    BYTES_BUCKETS,
    CLUSTER_RQ_ACTIVE,
    CLUSTER_RQ_PENDING_ACTIVE,
    CLUSTER_RQ_PENDING_OVERFLOW,
    CLUSTER_RQ_RETRY_OVERFLOW,
    DURATION_BUCKETS,
    LABELS,
    ClusterCounts,
    LabelValues,
    bounded,
    build_tag,
)

if TYPE_CHECKING:
    from proxyless_mesh.telemetry._policy import SidePolicy

#: The request metrics in the order the native aggregator takes them.
FAMILIES = (
    "istio_requests_total",
    "istio_request_duration_milliseconds",
    "istio_request_bytes",
    "istio_response_bytes",
    "istio_request_messages_total",
    "istio_response_messages_total",
)
_MESSAGES = 4  # FAMILIES from here on are gRPC's only
_PROTOCOL = LABELS.index("request_protocol")
#: Envoy's circuit-breaker stats, as its /stats/prometheus names them.
_CLUSTER_FAMILIES = (
    (CLUSTER_RQ_ACTIVE, "gauge", 0, "Requests in flight (Envoy upstream_rq_active)"),
    (CLUSTER_RQ_PENDING_ACTIVE, "gauge", 1, "Requests waiting for a slot"),
    (CLUSTER_RQ_PENDING_OVERFLOW, "counter", 3, "Requests refused by the circuit breakers (UO)"),
    (CLUSTER_RQ_RETRY_OVERFLOW, "counter", 4, "Retries refused by max_retries or the budget"),
)
ClusterSource = Callable[[], Iterable[tuple[str, ClusterCounts]]]
#: (name, type, help, [(label pairs, value)]): one family rendered at scrape time.
Family = tuple[str, str, str, list[tuple[list[tuple[str, str]], float]]]


def _no_clusters() -> Iterable[tuple[str, ClusterCounts]]:
    return ()


class IstioStats:
    """The native aggregator of one Telemetry and its label-group ids."""

    def __init__(self, max_label_sets: int = 2048) -> None:
        self._native = native_core.member("RequestMetrics")(DURATION_BUCKETS, BYTES_BUCKETS)
        self._record = self._native.record
        # label values -> (group id, the side policy it was registered under)
        self._ids: dict[LabelValues, tuple[int, SidePolicy]] = {}
        self._max = max_label_sets
        #: Each cluster's circuit-breaker numbers, read on a scrape (the Mesh sets it).
        self.clusters: ClusterSource = _no_clusters

    def record(
        self,
        values: LabelValues,
        side: SidePolicy,
        duration_ms: float,
        request_bytes: int,
        response_bytes: int,
        request_messages: int = 0,
        response_messages: int = 0,
    ) -> None:
        """One request (the message counts are kept for gRPC only)."""
        entry = self._ids.get(values)
        if entry is None or entry[1] is not side:
            entry = self._register(values, side)
        self._record(
            entry[0],
            duration_ms,
            request_bytes,
            response_bytes,
            request_messages,
            response_messages,
        )

    def _register(self, values: LabelValues, side: SidePolicy) -> tuple[int, SidePolicy]:
        key = bounded(values, self._ids, self._max)
        entry = self._ids.get(key)
        if entry is None or entry[1] is not side:
            entry = (self._native.register(group(key, side)), side)
            # A benign race: two threads may register the same group; the id is the same.
            self._ids[key] = entry
        return entry

    def families(self) -> list[Family]:
        """The families read at scrape time: istio_build, the clusters' numbers."""
        out: list[Family] = [
            (
                "istio_build",
                "gauge",
                "The proxy's build: component and tag (the library version)",
                [([("component", "proxy"), ("tag", build_tag())], 1.0)],
            )
        ]
        counts = list(self.clusters())
        for name, kind, index, description in _CLUSTER_FAMILIES:
            rows = [([("cluster_name", cluster)], float(n[index])) for cluster, n in counts]
            if rows:
                out.append((name, kind, description, rows))
        return out

    def prometheus_text(self) -> str:
        """Every series so far, in the Prometheus text format (0.0.4)."""
        text: str = self._native.render(self.families())
        return text


def group(values: LabelValues, side: SidePolicy) -> list[list[tuple[str, str]] | None]:
    """Per metric (FAMILIES order), its label pairs under `side`'s Telemetry
    API overrides, or None: disabled, or a message count of a non-gRPC call."""
    base = dict(zip(LABELS, values, strict=True))
    grpc = values[_PROTOCOL] == "grpc"
    out: list[list[tuple[str, str]] | None] = []
    for i, metric in enumerate(FAMILIES):
        if (i >= _MESSAGES and not grpc) or metric in side.disabled_metrics:
            out.append(None)
        elif side.tag_overrides:
            out.append(list(side.overridden(metric, base).items()))
        else:
            out.append(list(base.items()))
    return out
