"""Istio's dashboards and Kiali's graph read the metrics the native core keeps
(issue 25), with no OpenTelemetry SDK anywhere.

The system of test_istio_dashboards.py (a `productpage` Mesh calling the
HTTP `reviews` and the gRPC `greeter` through a real control plane), but a
real Prometheus scrapes `/stats/prometheus`, as it scrapes Envoy sidecars:
on the client Mesh's admin port, and on each server workload's own small
endpoint serving `Telemetry.prometheus_text()` (what an application without
the admin port does). The same panel queries must return data.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from meshlab import LocalMesh
from test_istio_dashboards import (
    System,
    configure,
    run_panels,
    serve_servers,
    traffic,
    workloads,
)
from test_telemetry_e2e import Prometheus

from proxyless_mesh import Mesh
from proxyless_mesh.diagnostics import PROMETHEUS_CONTENT_TYPE, STATS_PATH
from proxyless_mesh.telemetry import Telemetry, TelemetryConfig

NATIVE = TelemetryConfig(otel_metrics=False, tracing=False)


@contextlib.contextmanager
def stats_endpoint(telemetry: Telemetry) -> Iterator[str]:
    """`telemetry.prometheus_text()` at STATS_PATH on a loopback port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = telemetry.prometheus_text().encode()
            self.send_response(200 if self.path == STATS_PATH else 404)
            self.send_header("Content-Type", PROMETHEUS_CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def wait_for_destination_rates(prometheus: Prometheus) -> None:
    """Until both servers' own endpoints were scraped twice with traffic
    between (they are targets of their own, scraped apart from the client)."""
    deadline = time.monotonic() + 60
    query = 'sum by (request_protocol) (irate(istio_requests_total{reporter="destination"}[1m]))'
    while len(prometheus.query(f"{query} > 0")) < 2:  # Prometheus pushes nothing: poll
        assert time.monotonic() < deadline, "no destination rates of both protocols"
        time.sleep(0.2)


def test_istio_dashboards_and_kiali_read_the_native_stats(lab: LocalMesh, tmp_path: Path) -> None:
    reviews, greeter = workloads(NATIVE)
    prometheus = Prometheus(tmp_path, scrape_interval="1s", paths={"mesh": STATS_PATH})
    stop = threading.Event()
    with (
        serve_servers(reviews, greeter) as (reviews_port, greeter_port),
        stats_endpoint(reviews) as reviews_stats,
        stats_endpoint(greeter) as greeter_stats,
    ):
        configure(lab, System(reviews_port, greeter_port, 0, NATIVE))
        bootstrap = lab.bootstrap("productpage-1", labels={"app": "productpage", "version": "v1"})
        try:
            with Mesh.from_bootstrap(
                bootstrap, telemetry=NATIVE, admin_address="127.0.0.1:0"
            ) as mesh:
                assert mesh.diagnostics is not None
                targets = [mesh.diagnostics.address, reviews_stats, greeter_stats]
                prometheus.start({"mesh": targets})
                worker = threading.Thread(target=traffic, args=(mesh, stop))
                worker.start()
                try:
                    wait_for_destination_rates(prometheus)
                    run_panels(prometheus)
                finally:
                    stop.set()
                    worker.join(30)
        finally:
            prometheus.stop()
