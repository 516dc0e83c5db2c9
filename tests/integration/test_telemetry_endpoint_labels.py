"""A request that never reached a server still names its destination, as
Istio's proxies name it: from the telemetry metadata istiod puts on each EDS
endpoint ("workload;namespace;canonical service;canonical revision;cluster").

A real control plane serves `ratings` from a WorkloadEntry whose address
refuses connections (a bound port nobody listens on); a Mesh client's request
fails (UpstreamConnectionError; recorded as 503 with Envoy's flags) and its
`reporter="source"` series names
the WorkloadEntry's workload, namespace, canonical service/revision (from its
labels) and cluster. A ServiceEntry's inline endpoint carries no workload name
(Istio's rule): there the workload stays `unknown` while the canonical service
comes from the endpoint's `app` label.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from meshlab import LocalMesh, service_entry
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from proxyless_mesh import Mesh
from proxyless_mesh.errors import UpstreamConnectionError
from proxyless_mesh.telemetry import TelemetryConfig

RATINGS = "ratings.shop.svc.cluster.local"
DETAILS = "details.shop.svc.cluster.local"
DESTINATION = (
    "destination_workload",
    "destination_workload_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "response_code",
)


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port bound (so nobody else gets it) but never listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def workload_entry_service(port: int) -> str:
    service = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "ratings", "namespace": "shop"},
        "spec": {
            "hosts": [RATINGS],
            "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC",
            "location": "MESH_INTERNAL",
            "workloadSelector": {"labels": {"app": "ratings"}},
        },
    }
    entry = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": "ratings-vm-1", "namespace": "shop"},
        "spec": {
            "address": "127.0.0.1",
            "ports": {"http": port},
            "labels": {"app": "ratings", "version": "v3"},
        },
    }
    return f"{json.dumps(service)}\n---\n{json.dumps(entry)}\n"


def source_series(reader: InMemoryMetricReader) -> dict[tuple[Any, ...], int]:
    data = reader.get_metrics_data()
    out: dict[tuple[Any, ...], int] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != "istio_requests_total":
                    continue
                for point in metric.data.data_points:
                    labels = point.attributes
                    if labels["reporter"] == "source":
                        key = (labels["destination_service"], *(labels[k] for k in DESTINATION))
                        out[key] = out.get(key, 0) + int(point.value)
    return out


def test_a_refused_connection_names_the_destination_from_eds(
    lab: LocalMesh, refusing_port: int
) -> None:
    lab.write_config("ratings.yaml", workload_entry_service(refusing_port))
    lab.write_config(
        "details.yaml",
        service_entry(
            DETAILS, 8080, [("127.0.0.1", refusing_port, {"app": "details"})], namespace="shop"
        ),
    )
    lab.start_control_plane()
    reader = InMemoryMetricReader()
    config = TelemetryConfig(meter_provider=MeterProvider(metric_readers=[reader]), tracing=False)
    with (
        Mesh.from_bootstrap(lab.bootstrap("productpage-1", "shop"), telemetry=config) as mesh,
        httpx.Client(transport=mesh.httpx_transport(), timeout=10) as client,
    ):
        for host in (RATINGS, DETAILS):  # each after its retries (Istio's default policy)
            with pytest.raises(UpstreamConnectionError):
                client.get(f"http://{host}:8080/")
    assert source_series(reader) == {
        (RATINGS, "ratings-vm-1", "shop", "ratings", "v3", "Kubernetes", "503"): 1,
        (DETAILS, "unknown", "unknown", "details", "latest", "Kubernetes", "503"): 1,
    }
