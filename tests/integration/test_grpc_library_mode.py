"""gRPC through the mesh in library mode: the mesh routes and balances every
call over per-endpoint sub-channels (sync and asyncio channels)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from meshlab import LocalMesh, service_entry
from stats import assert_binomial

from proxyless_mesh import Mesh, MeshRpcError

HOST = "greeter.default.mesh"
TARGET = f"{HOST}:50051"
METHOD = "/greeter.Greeter/SayHello"
N = 1000
# 1,000 calls at 80/20: v2's count is checked at 5 sigma (tests/stats.py).


@pytest.fixture
def greeter(lab: LocalMesh) -> Iterator[LocalMesh]:
    v1 = lab.start_grpc_backend("greeter", "v1")
    v2 = lab.start_grpc_backend("greeter", "v2")
    lab.deploy_versions(HOST, 50051, {"v1": v1, "v2": v2}, {"v1": 80, "v2": 20}, protocol="GRPC")
    lab.start_control_plane()
    yield lab


def test_sync_channel_follows_80_20_split(greeter: LocalMesh) -> None:
    with (
        Mesh.from_bootstrap(greeter.bootstrap("grpc-lib")) as mesh,
        mesh.grpc_channel(TARGET) as channel,
    ):
        say_hello = channel.unary_unary(METHOD)
        counts = Counter(say_hello(b"hi", timeout=10).decode() for _ in range(N))
        _reply, call = say_hello.with_call(b"hi", timeout=10)
        assert call.code() == grpc.StatusCode.OK
    assert set(counts) == {"greeter/v1", "greeter/v2"}
    assert_binomial(counts["greeter/v2"], N, 0.20, f"v2 of the 80/20 split {counts}")


async def test_aio_channel_follows_80_20_split(greeter: LocalMesh) -> None:
    async with Mesh.from_bootstrap(greeter.bootstrap("grpc-aio")) as mesh:
        channel = mesh.aio_grpc_channel(TARGET)
        say_hello = channel.unary_unary(METHOD)
        # The first call is made before the target was ever resolved.
        counts = Counter([(await say_hello(b"hi", timeout=10)).decode()])
        for _ in range(N - 1):
            counts[(await say_hello(b"hi", timeout=10)).decode()] += 1
        await channel.close()
    assert_binomial(counts["greeter/v2"], N, 0.20, f"v2 of the 80/20 split {counts}")


def test_metadata_routes_and_unmatched_calls_are_unavailable(greeter: LocalMesh) -> None:
    greeter.write_config(
        "route.yaml",
        json.dumps(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "greeter", "namespace": "default"},
                "spec": {
                    "hosts": [HOST],
                    "http": [
                        {
                            "match": [{"headers": {"x-user": {"exact": "jason"}}}],
                            "route": [{"destination": {"host": HOST, "subset": "v2"}}],
                        },
                        {
                            "match": [{"uri": {"prefix": "/greeter.Greeter/"}}],
                            "route": [{"destination": {"host": HOST, "subset": "v1"}}],
                        },
                    ],
                },
            }
        ),
    )
    with Mesh.from_bootstrap(greeter.bootstrap("grpc-lib")) as mesh:
        channel = mesh.grpc_channel(TARGET)
        say_hello = channel.unary_unary(METHOD)
        # The watcher may still be loading the new route: wait for it to apply.
        deadline_calls = 200
        while say_hello(b"hi", metadata=[("x-user", "jason")], timeout=10) != b"greeter/v2":
            deadline_calls -= 1
            assert deadline_calls > 0, "the header route never applied"
        assert {say_hello(b"hi", metadata=[("x-user", "jason")]) for _ in range(50)} == {
            b"greeter/v2"
        }
        assert {say_hello(b"hi") for _ in range(50)} == {b"greeter/v1"}
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/other.Service/Call")(b"hi")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert isinstance(info.value, MeshRpcError) and info.value.response_flag == "NR"
        assert ("x-mesh-response-flags", "NR") in info.value.trailing_metadata()
        channel.close()


# -- streaming with an endpoint failing mid-test --------------------------------

STREAM_HOST = "ticker.default.mesh"
STREAM_TARGET = f"{STREAM_HOST}:50051"
OUTLIER = {
    "consecutiveGatewayErrors": 1,
    "interval": "1s",
    "baseEjectionTime": "60s",
    "maxEjectionPercent": 100,
}


def ticker_server(name: str) -> tuple[grpc.Server, int]:
    """Server-streaming Ticks (3 messages) and bidi Chat (echoes each message)."""

    def ticks(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(3):
            yield f"{name}:{i}".encode()

    def chat(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for message in requests:
            yield name.encode() + b":" + message

    handler = grpc.method_handlers_generic_handler(
        "ticker.Ticker",
        {
            "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture
def tickers(lab: LocalMesh) -> Iterator[dict[str, grpc.Server]]:
    servers = {name: ticker_server(name) for name in ("a", "b")}
    lab.write_config(
        "ticker.yaml",
        service_entry(
            STREAM_HOST,
            50051,
            [("127.0.0.1", p, {}) for _s, p in servers.values()],
            protocol="GRPC",
        )
        + "\n---\n"
        + json.dumps(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": "ticker", "namespace": "default"},
                "spec": {"host": STREAM_HOST, "trafficPolicy": {"outlierDetection": OUTLIER}},
            }
        ),
    )
    lab.start_control_plane()
    yield {name: server for name, (server, _port) in servers.items()}
    for server, _port in servers.values():
        server.stop(None).wait(5)


def stream_once(channel: grpc.Channel, bidi: bool) -> str:
    """One streaming call; the name of the backend that answered, or the
    status code's name when it failed."""
    try:
        if bidi:
            chat = channel.stream_stream("/ticker.Ticker/Chat")
            replies = list(chat(iter([b"x", b"y"]), timeout=10))
        else:
            replies = list(channel.unary_stream("/ticker.Ticker/Ticks")(b"", timeout=10))
    except grpc.RpcError as exc:
        return str(exc.code().name)
    assert len(replies) in (2, 3), replies
    return {reply.split(b":")[0].decode() for reply in replies}.pop()


@pytest.mark.parametrize("bidi", [False, True])
def test_streams_avoid_an_endpoint_that_failed(
    tickers: dict[str, grpc.Server], lab: LocalMesh, bidi: bool
) -> None:
    with (
        Mesh.from_bootstrap(lab.bootstrap("s"), preload=[STREAM_TARGET]) as mesh,
        mesh.grpc_channel(STREAM_TARGET) as channel,
    ):
        assert Counter(stream_once(channel, bidi) for _ in range(10)) == {"a": 5, "b": 5}
        tickers["a"].stop(None).wait(5)
        # Streams are not retried (one try each), so a call that lands on the
        # stopped endpoint fails; outlier detection ejects it at once and new
        # calls go to the healthy one.
        before = [stream_once(channel, bidi) for _ in range(4)]
        after = Counter(stream_once(channel, bidi) for _ in range(20))
    assert set(before) <= {"b", "UNAVAILABLE"} and "b" in before, before
    assert after == {"b": 20}, after
