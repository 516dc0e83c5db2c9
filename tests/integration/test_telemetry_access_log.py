"""Access log lines carry Envoy's response flags (issue 8 acceptance) in
Istio's formats (issue 23).

A real control plane routes the async mesh client to an ASGI server in this
process; access logging is on for the client (source, Istio's default text
format) and the server (destination, Istio's JSON keys). Each outcome -
success, a retried success, exhausted retries, route timeout (UT), overflow
(UO), no route (NR) - must give one line with the right flags and fields.
The text lines are read by a parser built from Envoy's default format
string as Istio documents it (written out here, not taken from the library).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
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
SERVER_LOGGER = "proxyless_mesh.access.server"
#: Envoy's default access log format, which Istio's proxies use (Istio docs,
#: "Envoy Access Logs"; Envoy docs, "Default format string").
ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
    '%CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" '
    "%BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" '
    '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% '
    "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% "
    "%ROUTE_NAME%"
)
#: Istio's JSON access log keys (accessLogEncoding: JSON).
ISTIO_JSON_KEYS = {
    "start_time", "route_name", "method", "path", "protocol", "response_code",
    "response_flags", "response_code_details", "connection_termination_details",
    "bytes_received", "bytes_sent", "duration", "upstream_service_time", "x_forwarded_for",
    "user_agent", "request_id", "authority", "upstream_host", "upstream_cluster",
    "upstream_local_address", "downstream_local_address", "downstream_remote_address",
    "requested_server_name", "upstream_transport_failure_reason",
}  # fmt: skip


def format_parser(fmt: str) -> Any:
    """A line parser derived from an Envoy format string: each %OPERATOR%
    is a field running to the next quote, bracket or space (what follows
    it in the format), literal text must match exactly."""
    pattern, names, pos = "", [], 0
    for match in re.finditer(r"%([A-Z_]+(?:\([^)]*\))?)%", fmt):
        pattern += re.escape(fmt[pos : match.start()])
        after = fmt[match.end() : match.end() + 1]
        pattern += {'"': '([^"]*)', "]": r"([^\]]*)"}.get(after, r"(\S+)")
        names.append(match.group(1))
        pos = match.end()
    compiled = re.compile("^" + pattern + re.escape(fmt[pos:]) + "$")

    def parse(line: str) -> dict[str, str]:
        found = compiled.match(line)
        assert found is not None, f"not Istio's format: {line!r}"
        return dict(zip(names, found.groups(), strict=True))

    return parse


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
    config = TelemetryConfig(
        access_log=True,
        metrics=False,
        tracing=False,
        access_log_format="json",
        access_logger=SERVER_LOGGER,
    )
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
    decision = mesh.snapshot.routes[f"{HOST}:8080"].routes[0].choices[0]
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
    parse = format_parser(ISTIO_TEXT_FORMAT)
    client_lines = [parse(r.getMessage()) for r in caplog.records if r.name == LOGGER]
    got = [
        (line["REQ(X-ENVOY-ORIGINAL-PATH?:PATH)"], line["RESPONSE_CODE"], line["RESPONSE_FLAGS"])
        for line in client_lines
    ]
    assert got == [
        ("/ok", "200", "-"),
        ("/flaky", "200", "-"),
        ("/down", "503", "URX"),
        ("/hang", "504", "UT"),
        ("/nope", "404", "NR"),
        ("/slow", "503", "UO"),
        ("/slow", "200", "-"),
        ("/slow", "200", "-"),
    ], got
    ok = client_lines[0]
    assert ok["REQ(X-REQUEST-ID)"] == "req-ok"
    assert ok["REQ(:METHOD)"] == "GET" and ok["REQ(:AUTHORITY)"] == f"{HOST}:8080"
    assert ok["UPSTREAM_HOST"] == f"127.0.0.1:{port}"
    assert ok["UPSTREAM_CLUSTER"] == f"outbound|8080||{HOST}"
    assert ok["ROUTE_NAME"] == "default/logged/ok"
    assert ok["BYTES_SENT"] == str(len(b"logged")) and ok["PROTOCOL"] == "HTTP/1.1"
    assert ok["REQ(USER-AGENT)"].startswith("python-httpx/")
    assert ok["RESPONSE_CODE_DETAILS"] == "via_upstream"
    assert ok["START_TIME"].endswith("Z") and ok["DURATION"].isdigit()
    assert client_lines[4]["RESPONSE_CODE_DETAILS"] == "route_not_found"
    assert client_lines[4]["UPSTREAM_HOST"] == "-"  # unset, as Envoy writes it
    # The server logged each try that reached it, with the caller's request id,
    # in Istio's JSON keys.
    server_lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == SERVER_LOGGER]
    assert all(set(line) == ISTIO_JSON_KEYS for line in server_lines)
    flaky = [
        (line["path"], line["response_code"]) for line in server_lines if line["path"] == "/flaky"
    ]
    assert flaky == [("/flaky", 503), ("/flaky", 200)]
    first = server_lines[0]
    assert first["request_id"] == "req-ok"
    assert first["user_agent"].startswith("python-httpx/")
    assert first["downstream_remote_address"].startswith("127.0.0.1:")
    assert first["downstream_local_address"] == f"127.0.0.1:{port}"
    assert first["upstream_service_time"] is None  # unset: null, as Envoy writes it


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
