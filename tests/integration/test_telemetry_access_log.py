"""Access log lines carry Envoy's response flags (issue 8 acceptance).

A real control plane routes the async mesh client to an ASGI server in this
process; access logging is on for the client (source) and the server
(destination). Each outcome - success, a retried success, exhausted retries,
route timeout (UT), overflow (UO), no route (NR) - must give one JSON line
with the right flags and fields.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from meshlab import LocalMesh, service_entry
from opentelemetry.sdk.trace import TracerProvider
from stats import assert_binomial

from proxyless_mesh import Mesh
from proxyless_mesh.errors import NoRouteError, UpstreamOverflowError, UpstreamTimeoutError
from proxyless_mesh.integrations import TelemetryMiddleware
from proxyless_mesh.telemetry import Telemetry, TelemetryConfig, Workload

HOST = "logged.default.mesh"
URL = f"http://{HOST}:8080"
LOGGER = "proxyless_mesh.access"


class App:
    """/ok 200; /flaky 503 then 200 alternately; /down 503; /hang and
    /slow wait for `release`."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.slow_arrived = threading.Event()
        self.flaky = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"].replace("lifespan.", "")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        path = scope["path"]
        status = 200
        if path == "/flaky":
            self.flaky += 1
            status = 503 if self.flaky % 2 else 200
        elif path == "/down":
            status = 503
        elif path in ("/hang", "/slow"):
            if path == "/slow":
                self.slow_arrived.set()
            await asyncio.to_thread(self.release.wait, 10)
        body = b"logged"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def server() -> Iterator[tuple[int, App]]:
    app = App()
    config = TelemetryConfig(access_log=True, metrics=False, tracing=False)
    wrapped = TelemetryMiddleware(
        app, telemetry=Telemetry(config, Workload("logged-v1", "default")), service=HOST
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    uv = uvicorn.Server(uvicorn.Config(wrapped, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], app
    finally:
        app.release.set()
        uv.should_exit = True
        thread.join(10)
        sock.close()


def configure(lab: LocalMesh, port: int) -> None:
    lab.write_config("svc.yaml", service_entry(HOST, 8080, [("127.0.0.1", port, {})]))

    def route(prefix: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": prefix.strip("/"),
            "match": [{"uri": {"prefix": prefix}}],
            "route": [{"destination": {"host": HOST}}],
            **extra,
        }

    retry = {"retries": {"attempts": 2, "retryOn": "5xx"}}
    http = [
        route("/hang", timeout="0.2s", retries={"attempts": 0}),
        route("/flaky", **retry),
        route("/down", **retry),
        route("/ok", retries={"attempts": 0}),
        route("/slow", retries={"attempts": 0}),
    ]
    for name, kind, spec in (
        ("vs", "VirtualService", {"hosts": [HOST], "http": http}),
        (
            "dr",
            "DestinationRule",
            {
                "host": HOST,
                "trafficPolicy": {
                    "connectionPool": {
                        "http": {"http2MaxRequests": 1, "http1MaxPendingRequests": 1}
                    }
                },
            },
        ),
    ):
        doc = {
            "apiVersion": "networking.istio.io/v1",
            "kind": kind,
            "metadata": {"name": "logged", "namespace": "default"},
            "spec": spec,
        }
        lab.write_config(f"{name}.yaml", json.dumps(doc))
    lab.start_control_plane()


def wait_pending(mesh: Mesh, app: App) -> None:
    assert app.slow_arrived.wait(10)
    decision = mesh.snapshot.routes[f"{HOST}:8080"].routes[0].choose(0.0)
    assert decision is not None
    resources = mesh.cluster_resources(
        decision.cluster, mesh.snapshot.sources[decision.cluster].cluster
    )
    deadline = time.monotonic() + 10
    while resources.pending_requests < 1:  # no event to wait on: poll the counter
        assert time.monotonic() < deadline
        time.sleep(0.005)


async def test_access_log_flags(
    lab: LocalMesh, server: tuple[int, App], caplog: pytest.LogCaptureFixture
) -> None:
    port, app = server
    configure(lab, port)
    caplog.set_level(logging.INFO, logger=LOGGER)
    config = TelemetryConfig(access_log=True, metrics=False, tracer_provider=TracerProvider())
    async with (
        Mesh.from_bootstrap(lab.bootstrap("caller"), telemetry=config) as mesh,
        httpx.AsyncClient(transport=mesh.async_httpx_transport(), timeout=10) as client,
    ):
        assert (
            await client.get(f"{URL}/ok", headers={"x-request-id": "req-ok"})
        ).status_code == 200
        assert (await client.get(f"{URL}/flaky")).status_code == 200
        assert (await client.get(f"{URL}/down")).status_code == 503
        with pytest.raises(UpstreamTimeoutError):
            await client.get(f"{URL}/hang")
        with pytest.raises(NoRouteError):
            await client.get(f"{URL}/nope")
        slow = [asyncio.create_task(client.get(f"{URL}/slow")) for _ in range(2)]
        await asyncio.to_thread(wait_pending, mesh, app)
        with pytest.raises(UpstreamOverflowError):
            await client.get(f"{URL}/slow")
        app.release.set()
        await asyncio.gather(*slow)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == LOGGER]
    client_lines = [line for line in lines if line["reporter"] == "source"]
    got = [
        (line["path"], line["response_code"], line["response_flags"], line["attempts"])
        for line in client_lines
    ]
    assert got == [
        ("/ok", 200, "-", 1),
        ("/flaky", 200, "-", 2),
        ("/down", 503, "URX", 3),
        ("/hang", 504, "UT", 1),
        ("/nope", 404, "NR", 0),
        ("/slow", 503, "UO", 0),
        ("/slow", 200, "-", 1),
        ("/slow", 200, "-", 1),
    ], got
    ok = client_lines[0]
    assert ok["x_request_id"] == "req-ok"
    assert ok["method"] == "GET" and ok["authority"] == f"{HOST}:8080"
    assert ok["upstream_host"] == f"127.0.0.1:{port}"
    assert ok["upstream_cluster"] == f"outbound|8080||{HOST}"
    assert ok["route_name"] == "default/logged/ok"
    assert ok["bytes_sent"] == len(b"logged") and ok["protocol"] == "HTTP/1.1"
    assert ok["trace_id"] and len(ok["trace_id"]) == 32
    assert ok["source_workload"] == "default/caller"
    assert ok["destination_workload"] == "default/logged-v1"
    assert ok["start_time"].endswith("Z") and ok["duration_ms"] >= 0
    # The server logged each try that reached it, with the caller's request id.
    server_lines = [line for line in lines if line["reporter"] == "destination"]
    flaky = [
        (line["path"], line["response_code"]) for line in server_lines if line["path"] == "/flaky"
    ]
    assert flaky == [("/flaky", 503), ("/flaky", 200)]
    assert server_lines[0]["x_request_id"] == "req-ok"
    assert server_lines[0]["source_workload"] == "default/caller"


def test_access_log_is_off_by_default_and_sampled() -> None:
    assert Telemetry(TelemetryConfig()).access is None
    never = Telemetry(TelemetryConfig(access_log=True, access_log_sampling=0.0))
    calls = [never.call("source", "http", "GET", "a.b.mesh:80", "/") for _ in range(50)]
    assert not any(call is not None and call.logged for call in calls)
    half = Telemetry(TelemetryConfig(access_log=True, access_log_sampling=0.5))
    n = 20_000  # at 5 sigma the accepted rate is 0.482-0.518
    logged = sum(
        1 for _ in range(n) if (c := half.call("source", "http", "GET", "h:1", "/")) and c.logged
    )
    assert_binomial(logged, n, 0.5, "access log lines sampled at 0.5")
