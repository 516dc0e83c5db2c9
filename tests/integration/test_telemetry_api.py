"""The Telemetry API end to end: a Telemetry in the control plane's config
directory reaches a library client over xDS and changes what it records;
editing it changes that again, without a restart (issue 23)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from meshlab import LocalMesh
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from test_telemetry_metrics import HOST, HttpServer, http_config, http_server  # noqa: F401

from proxyless_mesh import Mesh
from proxyless_mesh.telemetry import TelemetryConfig

LOGGER = "proxyless_mesh.access"
ERRORS_ONLY = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging: [{providers: [{name: envoy}], filter: {expression: "response.code >= 500"}}]
  metrics:
  - overrides:
    - match: {metric: REQUEST_SIZE, mode: CLIENT}
      disabled: true
    - match: {metric: REQUEST_COUNT}
      tagOverrides: {mesh_tier: {value: "'gold'"}}
"""
EVERYTHING = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging: [{providers: [{name: envoy}]}]
"""


def metric_names(reader: InMemoryMetricReader) -> dict[str, list[dict[str, Any]]]:
    data = reader.get_metrics_data()
    return {
        m.name: [dict(p.attributes or {}) for p in m.data.data_points]
        for rm in (data.resource_metrics if data else ())
        for sm in rm.scope_metrics
        for m in sm.metrics
    }


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """The policy swaps on the mesh's loop when the push lands: poll it."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_telemetry_resource_reaches_and_changes_the_client(
    lab: LocalMesh,
    http_server: HttpServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    lab.write_config("telemetry.yaml", ERRORS_ONLY)
    http_config(lab, http_server.port)
    reader = InMemoryMetricReader()
    config = TelemetryConfig(meter_provider=MeterProvider(metric_readers=[reader]))
    caplog.set_level(logging.INFO, logger=LOGGER)
    url = f"http://{HOST}:8080"
    with (
        Mesh.from_bootstrap(lab.bootstrap("frontend"), telemetry=config) as mesh,
        httpx.Client(transport=mesh.httpx_transport(), timeout=10) as client,
    ):
        assert mesh.telemetry.access is None  # TelemetryConfig leaves access logs off
        assert client.get(f"{url}/ok").status_code == 200  # fetches the listener
        wait_until(lambda: mesh.telemetry.policy.source.log_filter is not None, "no policy")
        caplog.clear()
        assert [client.get(f"{url}/{p}").status_code for p in ("ok", "fail", "ok")] == [
            200,
            503,
            200,
        ]
        lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert len(lines) == 1 and '"GET /fail HTTP/1.1" 503' in lines[0]
        found = metric_names(reader)
        assert "istio_request_bytes" not in found
        assert {labels["mesh_tier"] for labels in found["istio_requests_total"]} == {"gold"}

        lab.write_config("telemetry.yaml", EVERYTHING)
        wait_until(lambda: mesh.telemetry.policy.source.log_filter is None, "no update")
        caplog.clear()
        assert client.get(f"{url}/ok").status_code == 200
        lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert len(lines) == 1 and '"GET /ok HTTP/1.1" 200' in lines[0]
        assert "istio_request_bytes" in metric_names(reader)


def test_peer_metadata_never_leaves_the_mesh(
    lab: LocalMesh,
    http_server: HttpServer,  # noqa: F811
) -> None:
    """A host outside the mesh (ALLOW_ANY passthrough) sees no exchange
    headers; a meshed call carries them and gets the server's answer."""
    seen: list[dict[str, str]] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    outside = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=outside.serve_forever, daemon=True)
    thread.start()
    http_config(lab, http_server.port)
    reader = InMemoryMetricReader()
    config = TelemetryConfig(meter_provider=MeterProvider(metric_readers=[reader]))
    try:
        with (
            Mesh.from_bootstrap(lab.bootstrap("frontend"), telemetry=config) as mesh,
            httpx.Client(transport=mesh.httpx_transport(), timeout=10) as client,
        ):
            direct = client.get(f"http://127.0.0.1:{outside.server_address[1]}/x")
            assert direct.status_code == 200
            meshed = client.get(f"http://{HOST}:8080/ok")
            assert meshed.status_code == 200
    finally:
        outside.shutdown()
        thread.join(10)
        outside.server_close()
    (headers,) = seen
    assert not [name for name in headers if "peer-metadata" in name], headers
    assert "x-envoy-peer-metadata" in meshed.headers  # the meshed server answered
