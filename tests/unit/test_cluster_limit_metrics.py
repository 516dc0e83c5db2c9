"""The clusters' circuit-breaker counters on a metrics scrape (issue 25):
kept where admission keeps them (natively with the Rust core) and read only
when a metric reader collects, with Envoy's stat names."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap, make_bootstrap_json
from proxyless_mesh.model import CircuitBreakers, Cluster
from proxyless_mesh.resilience import Admission
from proxyless_mesh.telemetry import TelemetryConfig


def _values(reader: InMemoryMetricReader) -> dict[tuple[str, str], Any]:
    data = reader.get_metrics_data()
    return {
        (metric.name, point.attributes["cluster_name"]): point.value
        for rm in (data.resource_metrics if data else ())
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name.startswith("envoy_cluster_")
        for point in metric.data.data_points
    }


def test_a_scrape_reads_each_clusters_admission_counters() -> None:
    reader = InMemoryMetricReader()
    bootstrap = make_bootstrap_json(
        server_uri="127.0.0.1:1", node_id="web-1", namespace="shop", service_account="web"
    )
    mesh = Mesh(
        Bootstrap.from_json(bootstrap),
        telemetry=TelemetryConfig(meter_provider=MeterProvider(metric_readers=[reader])),
    )
    assert _values(reader) == {}  # no cluster asked for yet
    limits = CircuitBreakers(max_requests=2, max_pending_requests=1, max_retries=0)
    cluster = Cluster("outbound|80||a.shop", "a.shop", circuit_breakers=limits)
    a = mesh.cluster_resources(cluster.name, cluster)
    b = mesh.cluster_resources("outbound|80||b.shop", None)
    outcomes = [a.admit()[0] for _ in range(5)]
    assert outcomes == [Admission.ADMITTED] * 2 + [Admission.PENDING] + [Admission.OVERFLOW] * 2
    assert not a.try_acquire_retry()
    assert b.admit_now()
    assert _values(reader) == {
        ("envoy_cluster_upstream_rq_active", cluster.name): 2,
        ("envoy_cluster_upstream_rq_pending_active", cluster.name): 1,
        ("envoy_cluster_upstream_rq_pending_overflow", cluster.name): 2,
        ("envoy_cluster_upstream_rq_retry_overflow", cluster.name): 1,
        ("envoy_cluster_upstream_rq_active", b.cluster): 1,
        ("envoy_cluster_upstream_rq_pending_active", b.cluster): 0,
        ("envoy_cluster_upstream_rq_pending_overflow", b.cluster): 0,
        ("envoy_cluster_upstream_rq_retry_overflow", b.cluster): 0,
    }
    a.release_request()  # the slot goes to the waiting request
    b.release_request()
    values = _values(reader)
    assert values[("envoy_cluster_upstream_rq_active", cluster.name)] == 2
    assert values[("envoy_cluster_upstream_rq_pending_active", cluster.name)] == 0
    assert values[("envoy_cluster_upstream_rq_active", b.cluster)] == 0
