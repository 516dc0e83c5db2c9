"""Library-mode gRPC channels driven by the resilience engine: retries on gRPC
status codes, the route timeout as the deadline, circuit-breaker overflow,
fault injection. Backends are real grpc servers on 127.0.0.1 in this process,
each with the failure behaviour a test needs."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from meshlab import LocalMesh, service_entry

from proxyless_mesh import Mesh, MeshRpcError

HOST = "flaky.default.mesh"
TARGET = f"{HOST}:50051"
ECHO = "/flaky.Flaky/Echo"
SLOW = "/flaky.Flaky/Slow"
SUM = "/flaky.Flaky/Sum"


@dataclass
class Backend:
    """An in-process grpc server. `fail_every`: every n-th Echo/Sum call
    (1: all) answers UNAVAILABLE; `slow_for`: Slow holds its call this long
    (or until the backend stops)."""

    name: str
    fail_every: int = 0
    slow_for: float = 5.0
    calls: Counter[str] = field(default_factory=Counter)
    deadlines: list[float | None] = field(default_factory=list)
    server: Any = None
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _done: threading.Event = field(default_factory=threading.Event)

    def _count(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls[method] += 1
            n = self.calls[method]
        if self.fail_every and n % self.fail_every == 0:
            self.calls["failed"] += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} fails on purpose")

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._count("echo", context)
        return self.name.encode()

    def total(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        body = b"".join(requests)  # read the whole client stream first
        self._count("sum", context)
        return self.name.encode() + b":" + body

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.deadlines.append(context.time_remaining())
        self._done.wait(self.slow_for)  # until then, or until the backend stops
        return self.name.encode()

    def start(self) -> Backend:
        handler = grpc.method_handlers_generic_handler(
            "flaky.Flaky",
            {
                "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
                "Sum": grpc.stream_unary_rpc_method_handler(self.total),
                "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            },
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(16))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        return self

    def stop(self) -> None:
        self._done.set()
        self.server.stop(None).wait(5)


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started: list[Backend] = []
    yield started
    for backend in started:
        backend.stop()


def deploy(
    lab: LocalMesh,
    backends: list[Backend],
    *,
    http: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
) -> None:
    """The service over these backends, a VirtualService with `http` fields
    (Istio's default retries when none are given), a DestinationRule with
    `policy`; then the control plane."""
    lab.write_config(
        "flaky.yaml",
        service_entry(HOST, 50051, [("127.0.0.1", b.port, {}) for b in backends], protocol="GRPC"),
    )
    docs = [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "flaky", "namespace": "default"},
            "spec": {
                "hosts": [HOST],
                "http": [{"route": [{"destination": {"host": HOST}}], **(http or {})}],
            },
        }
    ]
    if policy is not None:
        docs.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": "flaky", "namespace": "default"},
                "spec": {"host": HOST, "trafficPolicy": policy},
            }
        )
    lab.write_config("policy.yaml", "\n---\n".join(json.dumps(d) for d in docs))
    lab.start_control_plane()


def test_default_policy_retries_unavailable_on_another_endpoint(
    lab: LocalMesh, backends: list[Backend]
) -> None:
    flaky, healthy = Backend("flaky", fail_every=2).start(), Backend("healthy").start()
    backends += [flaky, healthy]
    deploy(lab, backends)
    with Mesh.from_bootstrap(lab.bootstrap("c")) as mesh, mesh.grpc_channel(TARGET) as channel:
        echo = channel.unary_unary(ECHO)
        answers = Counter(echo(b"x", timeout=10) for _ in range(200))
        total = channel.stream_unary(SUM)
        # A client stream is replayed to the next endpoint when a try fails.
        sums = Counter(total(iter([b"a", b"b", b"c"]), timeout=10) for _ in range(40))
        _reply, call = echo.with_call(b"x", timeout=10)
        assert call.code() == grpc.StatusCode.OK
    assert sum(answers.values()) == 200 and set(answers) <= {b"flaky", b"healthy"}
    assert flaky.calls["failed"] >= 50, flaky.calls  # half of ~120 Echo+Sum tries failed
    assert set(sums) <= {b"flaky:abc", b"healthy:abc"} and sum(sums.values()) == 40, sums


async def test_aio_retries_unavailable(lab: LocalMesh, backends: list[Backend]) -> None:
    flaky, healthy = Backend("flaky", fail_every=2).start(), Backend("healthy").start()
    backends += [flaky, healthy]
    deploy(lab, backends)
    async with Mesh.from_bootstrap(lab.bootstrap("c")) as mesh:
        channel = mesh.aio_grpc_channel(TARGET)
        echo = channel.unary_unary(ECHO)
        answers = Counter([await echo(b"x", timeout=10) for _ in range(100)])

        async def stream() -> Any:
            for part in (b"a", b"b"):
                yield part

        total = channel.stream_unary(SUM)
        sums = Counter([await total(stream(), timeout=10) for _ in range(20)])
        await channel.close()
    assert sum(answers.values()) == 100 and flaky.calls["failed"] >= 20, flaky.calls
    assert set(sums) <= {b"flaky:ab", b"healthy:ab"} and sum(sums.values()) == 20, sums


def test_without_retries_the_caller_sees_unavailable(
    lab: LocalMesh, backends: list[Backend]
) -> None:
    """The control for the test above: with `attempts: 0` failures get through."""
    backends.append(Backend("down", fail_every=1).start())
    deploy(lab, backends, http={"retries": {"attempts": 0}})
    with (
        Mesh.from_bootstrap(lab.bootstrap("c")) as mesh,
        mesh.grpc_channel(TARGET) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        channel.unary_unary(ECHO)(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert backends[0].calls["echo"] == 1


def test_exhausted_retries_return_the_last_status(lab: LocalMesh, backends: list[Backend]) -> None:
    backends += [Backend(f"down{i}", fail_every=1).start() for i in range(2)]
    deploy(lab, backends, http={"retries": {"attempts": 2, "retryOn": "unavailable"}})
    with (
        Mesh.from_bootstrap(lab.bootstrap("c")) as mesh,
        mesh.grpc_channel(TARGET) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        channel.unary_unary(ECHO)(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert sum(b.calls["echo"] for b in backends) == 3  # one try + two retries
    assert all(b.calls["echo"] >= 1 for b in backends)  # retries went elsewhere


@pytest.mark.parametrize("aio", [False, True])
async def test_route_timeout_is_the_deadline(
    lab: LocalMesh, backends: list[Backend], aio: bool
) -> None:
    backends.append(Backend("slow").start())
    deploy(lab, backends, http={"timeout": "0.3s"})
    async with Mesh.from_bootstrap(lab.bootstrap("c"), preload=[TARGET]) as mesh:
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            if aio:
                channel = mesh.aio_grpc_channel(TARGET)
                try:
                    await channel.unary_unary(SLOW)(b"x", timeout=10)
                finally:
                    await channel.close()
            else:
                with mesh.grpc_channel(TARGET) as sync_channel:
                    sync_channel.unary_unary(SLOW)(b"x", timeout=10)
        took = time.monotonic() - start
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(caught.value, MeshRpcError) and "UT" in caught.value.response_flag
    assert 0.25 <= took < 1.0, took
    # grpc-timeout carried the route's 0.3 s deadline to the server, not the
    # caller's 10 s (grpc rounds the encoded timeout up: up to ~1 ms more seen).
    seen = backends[0].deadlines
    assert len(seen) == 1 and seen[0] is not None and 0.1 < seen[0] <= 0.31, seen


async def test_overflow_fails_fast_with_uo(lab: LocalMesh, backends: list[Backend]) -> None:
    backends.append(Backend("slow", slow_for=0.3).start())
    pool = {"http": {"http2MaxRequests": 2, "http1MaxPendingRequests": 1}}
    deploy(lab, backends, policy={"connectionPool": pool})
    async with Mesh.from_bootstrap(lab.bootstrap("c"), preload=[TARGET]) as mesh:
        channel = mesh.aio_grpc_channel(TARGET)
        slow = channel.unary_unary(SLOW)
        await channel.unary_unary(ECHO)(b"warm", timeout=10)

        async def call() -> tuple[str, float]:
            start = time.monotonic()
            try:
                await slow(b"x", timeout=10)
            except MeshRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                assert ("x-mesh-response-flags", "UO") in exc.trailing_metadata()
                return "overflow", time.monotonic() - start
            return "ok", time.monotonic() - start

        results = await asyncio.gather(*(call() for _ in range(8)))
        await channel.close()
    assert Counter(kind for kind, _ in results) == {"ok": 3, "overflow": 5}, results
    assert all(took < 0.05 for kind, took in results if kind == "overflow"), results


def test_fault_delay_and_abort(lab: LocalMesh, backends: list[Backend]) -> None:
    backends.append(Backend("healthy").start())
    fault = {
        "delay": {"fixedDelay": "0.2s", "percentage": {"value": 100}},
        "abort": {"grpcStatus": "RESOURCE_EXHAUSTED", "percentage": {"value": 100}},
    }
    deploy(lab, backends, http={"fault": fault})
    with (
        Mesh.from_bootstrap(lab.bootstrap("c"), preload=[TARGET]) as mesh,
        mesh.grpc_channel(TARGET) as channel,
    ):
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(ECHO)(b"x", timeout=10)
        took = time.monotonic() - start
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("x-mesh-response-flags", "DI,FI") in caught.value.trailing_metadata()
    assert took >= 0.2 and backends[0].calls["echo"] == 0
