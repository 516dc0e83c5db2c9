"""The console's mTLS lock, from a system that really runs mutual TLS.

A control plane with its CA (and `--prometheus-url`), a `reviews` workload
served through the mesh (STRICT mTLS, identity `shop/reviews`) under
TelemetryMiddleware, a `frontend` Mesh (identity `shop/frontend`) calling it,
and a real Prometheus scraping both sides' Istio metrics. The server's
series say `connection_security_policy="mutual_tls"`, so /api/graph reports
both edges as all-mTLS and the graph page, in a real headless Chromium,
draws the lock on them (test_console.py's system runs without the CA: no lock).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import BrowserMissing, chromium
from identities import (
    NAMESPACE,
    REVIEWS_HOST,
    listening_socket,
    service_entry,
    serving_asgi,
    workload_bootstrap,
)
from meshlab import LocalMesh
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server
from prometheus_lab import PrometheusServer

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.integrations import TelemetryMiddleware
from proxyless_mesh.telemetry import Telemetry, TelemetryConfig, Workload

FRONTEND_NODE = f"wl:{NAMESPACE}/frontend"
SERVICE_NODE = f"svc:{REVIEWS_HOST}"
REVIEWS_NODE = f"wl:{NAMESPACE}/reviews-v1"
STEP = 30.0


async def ok(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def metrics() -> Iterator[tuple[TelemetryConfig, int]]:
    """One meter provider for both sides, on one /metrics page."""
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    server, _ = start_http_server(0, addr="127.0.0.1")
    try:
        yield TelemetryConfig(meter_provider=provider, tracing=False), int(server.server_port)
    finally:
        server.shutdown()
        provider.shutdown()


def all_mtls_graph(admin: str) -> dict[str, Any]:
    """/api/graph once both edges have server-side rates (polled: Prometheus
    scrapes every 250 ms and rate() needs two samples)."""
    deadline = time.monotonic() + STEP
    while True:
        graph: dict[str, Any] = httpx.get(f"{admin}/api/graph").json()
        edges = {(e["source"], e["target"]): e for e in graph.get("edges", [])}
        wanted = [(FRONTEND_NODE, SERVICE_NODE), (SERVICE_NODE, REVIEWS_NODE)]
        if all(pair in edges and edges[pair]["mtls"] is not None for pair in wanted):
            return graph
        assert time.monotonic() < deadline, graph
        time.sleep(0.25)


def test_an_mtls_edge_carries_the_lock(
    lab: LocalMesh, tmp_path: Path, metrics: tuple[TelemetryConfig, int]
) -> None:
    config, metrics_port = metrics
    prometheus = PrometheusServer(tmp_path)
    stop = threading.Event()
    try:
        prometheus.start({"mesh": [f"127.0.0.1:{metrics_port}"]})
        sock = listening_socket()
        lab.write_config(
            "reviews.yaml", json.dumps(service_entry(REVIEWS_HOST, sock.getsockname()[1]))
        )
        lab.start_control_plane(extra_args=["--leaf-ttl", "1h", "--prometheus-url", prometheus.url])
        reviews = Mesh(Bootstrap.from_file(workload_bootstrap(lab, "reviews-1", "reviews")))
        frontend_bootstrap = workload_bootstrap(lab, "frontend-1", "frontend")
        server_side = Telemetry(
            config, Workload("reviews-v1", NAMESPACE, labels={"app": "reviews"})
        )
        app = TelemetryMiddleware(ok, telemetry=server_side, service=REVIEWS_HOST)
        with (
            contextlib.closing(sock),
            reviews,
            serving_asgi(app, reviews, sock),
            Mesh(Bootstrap.from_file(frontend_bootstrap), telemetry=config) as frontend,
            httpx.Client(transport=frontend.httpx_transport(), timeout=10) as client,
        ):

            def traffic() -> None:
                while not stop.is_set():
                    assert client.get(f"http://{REVIEWS_HOST}/").status_code == 200
                    stop.wait(0.02)

            worker = threading.Thread(target=traffic, daemon=True)
            worker.start()
            admin = f"http://{lab.admin_address}"
            graph = all_mtls_graph(admin)
            edges = {(e["source"], e["target"]): e for e in graph["edges"]}
            assert edges[(FRONTEND_NODE, SERVICE_NODE)]["mtls"] == 1.0
            assert edges[(SERVICE_NODE, REVIEWS_NODE)]["mtls"] == 1.0
            try:
                with chromium(timeout=STEP) as browser:
                    page = browser.new_page()
                    page.goto(f"{admin}/console/graph")
                    for source, target in (
                        (FRONTEND_NODE, SERVICE_NODE),
                        (SERVICE_NODE, REVIEWS_NODE),
                    ):
                        edge = page.locator(
                            f'g.edge[data-source="{source}"][data-target="{target}"]'
                        )
                        edge.locator("g.lock").wait_for()
            except BrowserMissing as exc:
                pytest.fail(str(exc))
            stop.set()
            worker.join(10)
    finally:
        stop.set()
        prometheus.stop()
