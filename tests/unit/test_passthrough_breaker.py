"""The per-host circuit breaker of passed-through hosts (resilience's
PassthroughBreaker, on pybreaker), through the real httpx transports against
a real HTTP server on 127.0.0.1 (an IP literal: ALLOW_ANY passes it through).
The breaker's clock is injected: the reset timeout passes by advancing it."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from proxyless_mesh import (
    Mesh,
    PassthroughBreaker,
    PassthroughCircuitOpenError,
    UpstreamOverflowError,
)
from proxyless_mesh.bootstrap import Bootstrap, XdsServer
from proxyless_mesh.integrations import AsyncMeshTransport, MeshTransport
from proxyless_mesh.runtime import ALLOW_ANY, MeshSnapshot
from proxyless_mesh.telemetry import Telemetry, TelemetryConfig


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class PassthroughRuntime:
    """Only what a passed-through request reads (the snapshot knows nothing)."""

    def __init__(self, breaker: PassthroughBreaker) -> None:
        self.snapshot = MeshSnapshot()
        self.outbound_policy = ALLOW_ANY
        self.telemetry = Telemetry(TelemetryConfig.off())
        self.passthrough_breaker = breaker


class Upstream:
    """A real HTTP server answering `status`, counting the requests it got."""

    def __init__(self) -> None:
        self.status = 503
        self.requests = 0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                upstream.requests += 1
                self.send_response(upstream.status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.authority = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5.0)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.stop()


def test_opens_after_fail_max_refuses_without_sending_then_one_trial_closes_it(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    breaker = PassthroughBreaker(fail_max=3, reset_timeout=30.0, clock=clock)
    caplog.set_level(logging.INFO, logger="proxyless_mesh.resilience")
    with httpx.Client(transport=MeshTransport(PassthroughRuntime(breaker))) as client:  # type: ignore[arg-type]
        statuses = [client.get(upstream.url).status_code for _ in range(3)]
        assert statuses == [503, 503, 503]  # the caller still sees each answer
        assert breaker.state(upstream.authority) == "open"
        with pytest.raises(PassthroughCircuitOpenError) as refused:
            client.get(upstream.url)
        assert upstream.requests == 3  # refused locally, never sent
        error = refused.value
        assert isinstance(error, httpx.TransportError)
        assert isinstance(error, UpstreamOverflowError)
        assert error.response_flag == "UO"
        assert upstream.authority in str(error)

        clock.now += 29.9
        with pytest.raises(PassthroughCircuitOpenError):
            client.get(upstream.url)
        clock.now += 0.1  # reset_timeout passed: one trial goes through
        upstream.status = 200
        assert client.get(upstream.url).status_code == 200
        assert breaker.state(upstream.authority) == "closed"
        assert upstream.requests == 4
    changes = [r.getMessage() for r in caplog.records if "circuit breaker" in r.getMessage()]
    assert changes == [
        f"passthrough circuit breaker of {upstream.authority}: closed -> open",
        f"passthrough circuit breaker of {upstream.authority}: open -> half-open",
        f"passthrough circuit breaker of {upstream.authority}: half-open -> closed",
    ]
    assert breaker.transitions == 3


def test_a_failed_trial_opens_it_again_for_another_reset_timeout(upstream: Upstream) -> None:
    clock = Clock()
    breaker = PassthroughBreaker(fail_max=1, reset_timeout=10.0, clock=clock)
    with httpx.Client(transport=MeshTransport(PassthroughRuntime(breaker))) as client:  # type: ignore[arg-type]
        assert client.get(upstream.url).status_code == 503
        clock.now += 10.0
        assert client.get(upstream.url).status_code == 503  # the trial, failed
        assert breaker.state(upstream.authority) == "open"
        clock.now += 9.0  # counted from the failed trial, not the first opening
        with pytest.raises(PassthroughCircuitOpenError):
            client.get(upstream.url)
    assert upstream.requests == 2


def test_only_one_trial_while_half_open(upstream: Upstream) -> None:
    """While the trial is out, other requests to the host are refused."""
    clock = Clock()
    breaker = PassthroughBreaker(fail_max=1, reset_timeout=5.0, clock=clock)
    inner_sent = threading.Event()
    release = threading.Event()

    class Held(httpx.BaseTransport):
        def __init__(self) -> None:
            self.real = httpx.HTTPTransport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if upstream.requests >= 1:  # the trial: hold it until told
                inner_sent.set()
                release.wait(10.0)
            return self.real.handle_request(request)

    transport = MeshTransport(PassthroughRuntime(breaker), Held())  # type: ignore[arg-type]
    with httpx.Client(transport=transport) as client:
        assert client.get(upstream.url).status_code == 503
        clock.now += 5.0
        upstream.status = 200
        trial = threading.Thread(target=lambda: client.get(upstream.url))
        trial.start()
        assert inner_sent.wait(10.0)
        assert breaker.state(upstream.authority) == "half-open"
        with pytest.raises(PassthroughCircuitOpenError):
            client.get(upstream.url)
        release.set()
        trial.join(10.0)
        assert breaker.state(upstream.authority) == "closed"
        assert client.get(upstream.url).status_code == 200


def test_async_connection_failures_open_it_and_are_counted_in_metrics() -> None:
    """A host that refuses connections (a port nobody listens on): each
    ConnectError counts; the state changes are counted by the mesh's meter."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reader = InMemoryMetricReader()
    breaker = PassthroughBreaker(fail_max=2, reset_timeout=60.0, clock=Clock())
    breaker.use_meter(MeterProvider(metric_readers=[reader]).get_meter("test"))

    async def run() -> None:
        transport = AsyncMeshTransport(PassthroughRuntime(breaker))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(2):
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"http://127.0.0.1:{port}/")
            with pytest.raises(PassthroughCircuitOpenError):
                await client.get(f"http://127.0.0.1:{port}/")

    asyncio.run(run())
    data = reader.get_metrics_data()
    points = [
        (dict(p.attributes), p.value)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "proxyless_mesh.passthrough_breaker.transitions"
        for p in m.data.data_points
    ]
    assert points == [({"host": f"127.0.0.1:{port}", "state": "open"}, 1)]


def test_mesh_option_reaches_its_transports() -> None:
    breaker = PassthroughBreaker()
    mesh = Mesh(
        Bootstrap(xds_servers=(XdsServer("127.0.0.1:1"),)),
        passthrough_breaker=breaker,
        telemetry=TelemetryConfig.off(),
        cache_certificate=False,
    )
    assert mesh.passthrough_breaker is breaker
    assert Mesh(Bootstrap(xds_servers=(XdsServer("127.0.0.1:1"),))).passthrough_breaker is None


def test_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="fail_max"):
        PassthroughBreaker(fail_max=0)
    with pytest.raises(ValueError, match="reset_timeout"):
        PassthroughBreaker(reset_timeout=0)


def test_a_request_sent_before_it_opened_does_not_decide_the_trial(upstream: Upstream) -> None:
    """A late success of a request sent while closed neither closes the
    half-open breaker nor counts as its trial; the trial's failure reopens it."""
    clock = Clock()
    breaker = PassthroughBreaker(fail_max=2, reset_timeout=5.0, clock=clock)
    held = {name: (threading.Event(), threading.Event()) for name in ("early", "trial")}

    class Holding(httpx.BaseTransport):
        """Holds a request named by its x-hold header until released."""

        def __init__(self) -> None:
            self.real = httpx.HTTPTransport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            name = request.headers.get("x-hold")
            if name is not None:
                arrived, release = held[name]
                arrived.set()
                assert release.wait(10.0)
            return self.real.handle_request(request)

    transport = MeshTransport(PassthroughRuntime(breaker), Holding())  # type: ignore[arg-type]
    statuses: dict[str, int] = {}
    with httpx.Client(transport=transport) as client:

        def send(name: str) -> None:
            statuses[name] = client.get(upstream.url, headers={"x-hold": name}).status_code

        early = threading.Thread(target=send, args=("early",))
        early.start()
        assert held["early"][0].wait(10.0)
        assert [client.get(upstream.url).status_code for _ in range(2)] == [503, 503]
        assert breaker.state(upstream.authority) == "open"
        clock.now += 5.0
        trial = threading.Thread(target=send, args=("trial",))
        trial.start()
        assert held["trial"][0].wait(10.0)
        upstream.status = 200
        held["early"][1].set()  # the early request succeeds now
        early.join(10.0)
        assert statuses["early"] == 200
        assert breaker.state(upstream.authority) == "half-open"
        upstream.status = 503
        held["trial"][1].set()
        trial.join(10.0)
        assert statuses["trial"] == 503
        assert breaker.state(upstream.authority) == "open"
