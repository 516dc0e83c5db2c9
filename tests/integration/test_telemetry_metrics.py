"""Exact Istio request metrics on both reporters (issue 8 acceptance).

A real control plane routes the mesh client to servers running in this
process (so one InMemoryMetricReader per side can read them): an ASGI app
behind TelemetryMiddleware (HTTP) and a grpc server with the telemetry
interceptor (gRPC). Requests with known outcomes (200, 503, no route,
overflow; OK, INTERNAL, no route) must produce exactly the expected
`istio_requests_total` series and values.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from meshlab import LocalMesh, service_entry
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from proxyless_mesh import Mesh
from proxyless_mesh.errors import NoRouteError, UpstreamOverflowError
from proxyless_mesh.integrations import TelemetryMiddleware, TelemetryServerInterceptor
from proxyless_mesh.telemetry import Telemetry, TelemetryConfig, Workload

HOST = "echo.default.mesh"
GRPC_HOST = "greeter.default.mesh"
SERVER = Workload("echo-v1", "default", "spiffe://cluster.local/ns/default/sa/echo")


def requests_total(
    reader: InMemoryMetricReader, name: str = "istio_requests_total"
) -> dict[frozenset[tuple[str, Any]], int]:
    """Every series of counter `name` (istio_requests_total): its label set -> value."""
    data = reader.get_metrics_data()
    found: dict[frozenset[tuple[str, Any]], int] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        found[frozenset(point.attributes.items())] = int(point.value)
    return found


def summary(
    reader: InMemoryMetricReader, *keys: str, name: str = "istio_requests_total"
) -> Counter[tuple[Any, ...]]:
    out: Counter[tuple[Any, ...]] = Counter()
    for labels, value in requests_total(reader, name).items():
        d = dict(labels)
        out[tuple(d[k] for k in keys)] += value
    return out


KEYS = ("reporter", "request_protocol", "response_code", "grpc_response_status", "response_flags")


def telemetry_pair() -> tuple[InMemoryMetricReader, TelemetryConfig]:
    reader = InMemoryMetricReader()
    return reader, TelemetryConfig(meter_provider=MeterProvider(metric_readers=[reader]))


# -- an ASGI server in this process ------------------------------------------


class EchoApp:
    """/ok -> 200, /fail -> 503, /slow -> 200 once `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.slow_arrived = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].replace("lifespan.", "")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        if scope["path"] == "/slow":
            self.slow_arrived.set()
            await asyncio.to_thread(self.release.wait, 10)
        status = 503 if scope["path"] == "/fail" else 200
        body = b"echo"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


@dataclass
class HttpServer:
    port: int
    app: EchoApp
    reader: InMemoryMetricReader


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    """uvicorn on a socket bound and listening before the thread starts, so
    clients can connect at once (the backlog holds them until accepted)."""
    reader = InMemoryMetricReader()
    config = TelemetryConfig(meter_provider=MeterProvider(metric_readers=[reader]))
    app = EchoApp()
    wrapped = TelemetryMiddleware(app, telemetry=Telemetry(config, SERVER), service=HOST)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(wrapped, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield HttpServer(sock.getsockname()[1], app, reader)
    finally:
        app.release.set()
        server.should_exit = True
        thread.join(10)
        sock.close()


def http_config(lab: LocalMesh, port: int) -> None:
    lab.write_config("echo.yaml", service_entry(HOST, 8080, [("127.0.0.1", port, {})]))
    route = {
        "match": [{"uri": {"prefix": p}} for p in ("/ok", "/fail", "/slow")],
        "route": [{"destination": {"host": HOST}}],
        "retries": {"attempts": 0},
    }
    lab.write_config(
        "vs.yaml",
        json.dumps(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "echo", "namespace": "default"},
                "spec": {"hosts": [HOST], "http": [route]},
            }
        ),
    )
    pool = {"http": {"http2MaxRequests": 1, "http1MaxPendingRequests": 1}}
    lab.write_config(
        "dr.yaml",
        json.dumps(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": "echo", "namespace": "default"},
                "spec": {"host": HOST, "trafficPolicy": {"connectionPool": pool}},
            }
        ),
    )
    lab.start_control_plane()


EXPECTED_SOURCE = {
    ("source", "http", "200", "", "-"): 5,  # 3 /ok + the 2 /slow that got a slot
    ("source", "http", "503", "", "-"): 2,
    ("source", "http", "404", "", "NR"): 1,
    ("source", "http", "503", "", "UO"): 1,
}
EXPECTED_DESTINATION = {
    ("destination", "http", "200", "", "-"): 5,
    ("destination", "http", "503", "", "-"): 2,
}


def check_http(client_reader: InMemoryMetricReader, server: HttpServer) -> None:
    assert summary(client_reader, *KEYS) == EXPECTED_SOURCE
    assert summary(server.reader, *KEYS) == EXPECTED_DESTINATION
    # The full label set of one series per side, as a dashboard reads it.
    ok_client = {
        "reporter": "source",
        "source_workload": "frontend",
        "source_workload_namespace": "default",
        "source_principal": "unknown",
        "destination_service": HOST,
        "destination_service_name": "echo",
        "destination_service_namespace": "default",
        "source_app": "unknown",
        "source_version": "unknown",
        "source_cluster": "Kubernetes",
        "source_canonical_service": "frontend",
        "source_canonical_revision": "latest",
        # learned from the server's x-envoy-peer-metadata answer:
        "destination_workload": "echo-v1",
        "destination_workload_namespace": "default",
        "destination_principal": "unknown",
        "destination_app": "unknown",
        "destination_version": "unknown",
        "destination_cluster": "Kubernetes",
        "destination_canonical_service": "echo-v1",
        "destination_canonical_revision": "latest",
        "request_protocol": "http",
        "response_code": "200",
        "grpc_response_status": "",
        "response_flags": "-",
        "connection_security_policy": "unknown",  # Istio: the destination decides
    }
    assert requests_total(client_reader)[frozenset(ok_client.items())] == 5
    ok_server = {
        **ok_client,
        "reporter": "destination",
        "connection_security_policy": "none",
    }
    assert requests_total(server.reader)[frozenset(ok_server.items())] == 5


def slow_in_flight_and_pending(mesh: Mesh, server: HttpServer) -> None:
    """Wait until one /slow holds the only request slot and one is pending."""
    assert server.app.slow_arrived.wait(10)
    table = mesh.snapshot.routes[f"{HOST}:8080"]
    decision = table.routes[0].choices[0]
    assert decision is not None
    source = mesh.snapshot.sources[decision.cluster]
    resources = mesh.cluster_resources(decision.cluster, source.cluster)
    deadline = time.monotonic() + 10
    while resources.pending_requests < 1:  # no event to wait on: poll the counter
        assert time.monotonic() < deadline, "the second /slow never became pending"
        time.sleep(0.005)


def test_http_sync_exact_counts(lab: LocalMesh, http_server: HttpServer) -> None:
    http_config(lab, http_server.port)
    reader, config = telemetry_pair()
    url = f"http://{HOST}:8080"
    with (
        Mesh.from_bootstrap(lab.bootstrap("frontend"), telemetry=config) as mesh,
        httpx.Client(transport=mesh.httpx_transport(), timeout=10) as client,
    ):
        assert [client.get(f"{url}/ok").status_code for _ in range(3)] == [200] * 3
        assert [client.get(f"{url}/fail").status_code for _ in range(2)] == [503] * 2
        with pytest.raises(NoRouteError):
            client.get(f"{url}/nope")
        with futures.ThreadPoolExecutor(2) as pool:
            slow = [pool.submit(client.get, f"{url}/slow") for _ in range(2)]
            slow_in_flight_and_pending(mesh, http_server)
            with pytest.raises(UpstreamOverflowError):
                client.get(f"{url}/slow")
            http_server.app.release.set()
            assert [f.result().status_code for f in slow] == [200, 200]
    check_http(reader, http_server)


async def test_http_async_exact_counts(lab: LocalMesh, http_server: HttpServer) -> None:
    http_config(lab, http_server.port)
    reader, config = telemetry_pair()
    url = f"http://{HOST}:8080"
    async with (
        Mesh.from_bootstrap(lab.bootstrap("frontend"), telemetry=config) as mesh,
        httpx.AsyncClient(transport=mesh.async_httpx_transport(), timeout=10) as client,
    ):
        for _ in range(3):
            assert (await client.get(f"{url}/ok")).status_code == 200
        for _ in range(2):
            assert (await client.get(f"{url}/fail")).status_code == 503
        with pytest.raises(NoRouteError):
            await client.get(f"{url}/nope")
        slow = [asyncio.create_task(client.get(f"{url}/slow")) for _ in range(2)]
        await asyncio.to_thread(slow_in_flight_and_pending, mesh, http_server)
        with pytest.raises(UpstreamOverflowError):
            await client.get(f"{url}/slow")
        http_server.app.release.set()
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200, 200]
    check_http(reader, http_server)


# -- gRPC ----------------------------------------------------------------------


@dataclass
class GrpcServer:
    port: int
    reader: InMemoryMetricReader


@pytest.fixture
def grpc_server() -> Iterator[GrpcServer]:
    reader = InMemoryMetricReader()
    config = TelemetryConfig(meter_provider=MeterProvider(metric_readers=[reader]))
    interceptor = TelemetryServerInterceptor(
        telemetry=Telemetry(config, Workload("greeter-v1", "default")), service=GRPC_HOST
    )

    def ok(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"hello " + request

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.INTERNAL, "broken on purpose")
        raise AssertionError("abort returns only by raising")

    def chat(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:  # two answers to each message
            yield request
            yield request.upper()

    handler = grpc.method_handlers_generic_handler(
        "greeter.Greeter",
        {
            "Ok": grpc.unary_unary_rpc_method_handler(ok),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[interceptor])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield GrpcServer(port, reader)
    finally:
        server.stop(None).wait(5)


def grpc_config(lab: LocalMesh, port: int) -> None:
    lab.write_config(
        "greeter.yaml",
        service_entry(GRPC_HOST, 50051, [("127.0.0.1", port, {})], protocol="GRPC"),
    )
    route = {
        "match": [{"uri": {"prefix": "/greeter.Greeter/"}}],
        "route": [{"destination": {"host": GRPC_HOST}}],
    }
    lab.write_config(
        "vs.yaml",
        json.dumps(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "greeter", "namespace": "default"},
                "spec": {"hosts": [GRPC_HOST], "http": [route]},
            }
        ),
    )
    lab.start_control_plane()


GRPC_SOURCE = {
    ("source", "grpc", "200", "0", "-"): 4,
    ("source", "grpc", "200", "13", "-"): 2,
    ("source", "grpc", "200", "14", "NR"): 1,
}
GRPC_DESTINATION = {
    ("destination", "grpc", "200", "0", "-"): 4,
    ("destination", "grpc", "200", "13", "-"): 2,
}
CHAT = [b"a", b"b", b"c"]  # one Chat stream: 3 messages in, 6 out


def check_grpc(client_reader: InMemoryMetricReader, server: GrpcServer) -> None:
    assert summary(client_reader, *KEYS) == GRPC_SOURCE
    assert summary(server.reader, *KEYS) == GRPC_DESTINATION
    workloads = summary(server.reader, "source_workload", "destination_workload")
    assert workloads == {("frontend", "greeter-v1"): 6}
    # The source learned the server from its exchange answer (in the trailers),
    # for calls that reached it; the NR refusal names no destination workload.
    seen = summary(client_reader, "destination_workload", "grpc_response_status")
    assert seen == {("greeter-v1", "0"): 4, ("greeter-v1", "13"): 2, ("unknown", "14"): 1}
    # Istio's gRPC message counts, both sides: a unary call is one message each
    # way; a failed call answers none; the NR refusal sent none (zero series);
    # the Chat stream sent 3 and got 6.
    for reader in (client_reader, server.reader):
        sent = summary(reader, "grpc_response_status", name="istio_request_messages_total")
        answered = summary(reader, "grpc_response_status", name="istio_response_messages_total")
        assert (sent, answered) == (Counter({("0",): 6, ("13",): 2}), Counter({("0",): 9}))


def test_grpc_sync_exact_counts(lab: LocalMesh, grpc_server: GrpcServer) -> None:
    grpc_config(lab, grpc_server.port)
    reader, config = telemetry_pair()
    with Mesh.from_bootstrap(lab.bootstrap("frontend"), telemetry=config) as mesh:
        channel = mesh.grpc_channel(f"{GRPC_HOST}:50051")
        ok = channel.unary_unary("/greeter.Greeter/Ok")
        fail = channel.unary_unary("/greeter.Greeter/Fail")
        assert [ok(b"x", timeout=5) for _ in range(2)] == [b"hello x"] * 2
        assert ok.future(b"y", timeout=5).result() == b"hello y"
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as caught:
                fail(b"x", timeout=5)
            assert caught.value.code() == grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/other.Service/Call")(b"x", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        chat = channel.stream_stream("/greeter.Greeter/Chat")
        assert len(list(chat(iter(CHAT), timeout=5))) == 2 * len(CHAT)
        channel.close()
    check_grpc(reader, grpc_server)


async def test_grpc_aio_exact_counts(lab: LocalMesh, grpc_server: GrpcServer) -> None:
    grpc_config(lab, grpc_server.port)
    reader, config = telemetry_pair()
    async with Mesh.from_bootstrap(lab.bootstrap("frontend"), telemetry=config) as mesh:
        channel = mesh.aio_grpc_channel(f"{GRPC_HOST}:50051")
        ok = channel.unary_unary("/greeter.Greeter/Ok")
        fail = channel.unary_unary("/greeter.Greeter/Fail")
        for _ in range(3):
            assert await ok(b"x", timeout=5) == b"hello x"
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as caught:
                await fail(b"x", timeout=5)
            assert caught.value.code() == grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.RpcError):
            await channel.unary_unary("/other.Service/Call")(b"x", timeout=5)
        chat = channel.stream_stream("/greeter.Greeter/Chat")
        assert len([m async for m in chat(iter(CHAT), timeout=5)]) == 2 * len(CHAT)
        await channel.close()
        await asyncio.sleep(0)  # let the done-callbacks' recorders run
    check_grpc(reader, grpc_server)
