"""grpc_wire (gRPC over h2, no grpcio on the client side) against a real
grpcio server on 127.0.0.1: messages, statuses from trailers and from
trailers-only responses, metadata (binary too), deadlines, flow control with
messages larger than the default windows, and a refused connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from proxyless_mesh.grpc_wire import GrpcCallError, H2Channel, parse_target, unary_channel

BIG = 5 * 1024 * 1024 + 7  # beyond every default HTTP/2 window and frame size


class Service:
    """/t.S/{Echo,Fail,Slow,Meta,Chat}: bytes in, bytes out."""

    def __init__(self) -> None:
        self.metadata: list[tuple[str, Any]] = []

    async def echo(self, request: bytes, context: Any) -> bytes:
        return request[::-1]

    async def fail(self, request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no: 100% sure\nreally")
        raise AssertionError("abort returns never")

    async def slow(self, request: bytes, context: Any) -> bytes:
        await asyncio.sleep(30)
        return b""

    async def meta(self, request: bytes, context: Any) -> bytes:
        self.metadata = list(context.invocation_metadata())
        return b"ok"

    async def chat(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for r in requests:
            yield r * 2
        context.set_code(grpc.StatusCode.OK)

    def handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            "t.S",
            {
                "Echo": unary(self.echo),
                "Fail": unary(self.fail),
                "Slow": unary(self.slow),
                "Meta": unary(self.meta),
                "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            },
        )


@pytest.fixture
async def server() -> AsyncIterator[tuple[Service, str]]:
    service = Service()
    options = [
        ("grpc.max_receive_message_length", 2 * BIG),
        ("grpc.max_send_message_length", 2 * BIG),
    ]
    srv = grpc.aio.server(options=options)
    srv.add_generic_rpc_handlers((service.handler(),))
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        await srv.stop(None)


async def test_unary_round_trip_including_a_message_beyond_the_windows(
    server: tuple[Service, str],
) -> None:
    channel = H2Channel(server[1], max_receive_message_length=BIG)
    try:
        assert await channel.unary("/t.S/Echo", b"abc", timeout=5) == b"cba"
        big = bytes(range(256)) * (BIG // 256) + b"x" * (BIG % 256)
        assert await channel.unary("/t.S/Echo", big, timeout=20) == big[::-1]
        assert await channel.unary("/t.S/Echo", b"", timeout=5) == b""
    finally:
        await channel.close()


async def test_a_message_over_the_receive_limit_fails_the_call_not_the_channel(
    server: tuple[Service, str],
) -> None:
    channel = H2Channel(server[1])  # grpcio's default limit, 4 MiB
    try:
        with pytest.raises(GrpcCallError) as info:
            await channel.unary("/t.S/Echo", b"x" * (4 * 1024 * 1024 + 1), timeout=20)
        assert info.value.code == "RESOURCE_EXHAUSTED"
        assert await channel.unary("/t.S/Echo", b"x" * (4 * 1024 * 1024), timeout=20) == b"x" * (
            4 * 1024 * 1024
        )
    finally:
        await channel.close()


async def test_a_status_from_the_server_is_its_code_and_decoded_message(
    server: tuple[Service, str],
) -> None:
    channel = H2Channel(server[1])
    try:
        with pytest.raises(GrpcCallError) as info:
            await channel.unary("/t.S/Fail", b"", timeout=5)
        assert (info.value.code, info.value.details) == (
            "PERMISSION_DENIED",
            "no: 100% sure\nreally",
        )
        with pytest.raises(GrpcCallError) as info:  # trailers-only, from grpcio itself
            await channel.unary("/t.S/Nope", b"", timeout=5)
        assert info.value.code == "UNIMPLEMENTED"
        assert await channel.unary("/t.S/Echo", b"ab", timeout=5) == b"ba"  # channel still fine
    finally:
        await channel.close()


async def test_deadline_is_sent_and_enforced(server: tuple[Service, str]) -> None:
    channel = H2Channel(server[1])
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        with pytest.raises(GrpcCallError) as info:
            await channel.unary("/t.S/Slow", b"", timeout=0.3)
        assert info.value.code == "DEADLINE_EXCEEDED"
        assert loop.time() - started < 5
    finally:
        await channel.close()


async def test_metadata_text_and_binary_arrive_as_sent(server: tuple[Service, str]) -> None:
    service, address = server
    channel = H2Channel(address)
    raw = bytes(range(256))
    try:
        metadata = (("authorization", "Bearer t0k"), ("x-proof-bin", raw))
        await channel.unary("/t.S/Meta", b"", metadata=metadata, timeout=5)
    finally:
        await channel.close()
    seen = dict(service.metadata)
    assert seen["authorization"] == "Bearer t0k"
    assert seen["x-proof-bin"] == raw


async def test_bidirectional_stream_then_ok_end(server: tuple[Service, str]) -> None:
    channel = H2Channel(server[1])
    try:
        call = channel.stream("/t.S/Chat", bytes, bytes)
        await call.write(b"a")  # before start(): the call starts itself
        assert await call.read() == b"aa"
        await call.write(b"bc", end=True)
        assert await call.read() == b"bcbc"
        assert await call.read() is None  # the server ended the call with OK
        assert await call.read() is None
        call.cancel()
    finally:
        await channel.close()


async def test_cancel_ends_the_server_side_and_the_channel_keeps_working(
    server: tuple[Service, str],
) -> None:
    channel = H2Channel(server[1])
    try:
        call = channel.stream("/t.S/Chat", bytes, bytes)
        await call.write(b"z")
        assert await call.read() == b"zz"
        call.cancel()
        with pytest.raises(GrpcCallError) as info:
            await call.read()
        assert info.value.code == "CANCELLED"
        assert await channel.unary("/t.S/Echo", b"12", timeout=5) == b"21"
    finally:
        await channel.close()


async def test_nothing_listening_is_unavailable() -> None:
    channel = H2Channel("127.0.0.1:1")
    with pytest.raises(GrpcCallError) as info:
        await channel.unary("/t.S/Echo", b"", timeout=5)
    assert info.value.code == "UNAVAILABLE"
    await channel.close()


async def test_server_going_away_fails_the_open_call(server: tuple[Service, str]) -> None:
    channel = H2Channel(server[1])
    call = channel.stream("/t.S/Chat", bytes, bytes)
    await call.write(b"q")
    assert await call.read() == b"qq"
    connection = await channel.connection()
    connection.writer.transport.abort()  # the socket dies under the call
    with pytest.raises(GrpcCallError) as info:
        await asyncio.wait_for(call.read(), 5)
    assert info.value.code == "UNAVAILABLE"
    assert await channel.unary("/t.S/Echo", b"xy", timeout=5) == b"yx"  # reconnects
    await channel.close()


@pytest.mark.parametrize("transport", ["h2", "grpcio"])
async def test_unary_channel_is_the_same_over_both_transports(
    server: tuple[Service, str], transport: str
) -> None:
    channel = unary_channel(server[1], transport)
    try:
        assert await channel.call("/t.S/Echo", b"xyz", timeout=5) == b"zyx"
        with pytest.raises(GrpcCallError) as info:
            await channel.call("/t.S/Fail", b"", timeout=5)
        assert (info.value.code, info.value.details) == (
            "PERMISSION_DENIED",
            "no: 100% sure\nreally",
        )
    finally:
        await channel.close()


@pytest.mark.parametrize(
    ("target", "authority"),
    [
        ("127.0.0.1:15010", "127.0.0.1:15010"),
        ("dns:///cp.mesh:15010", "cp.mesh:15010"),
        ("dns://8.8.8.8/cp.mesh:15010", "cp.mesh:15010"),
        ("ipv6:[::1]:9", "[::1]:9"),
        ("[::1]:9", "[::1]:9"),
        ("cp.mesh", "cp.mesh:443"),
        ("unix:///tmp/x.sock", "localhost"),
    ],
)
def test_target_forms(target: str, authority: str) -> None:
    assert parse_target(target).authority == authority


@pytest.mark.parametrize("target", ["xds:///svc", "ipv4:1.2.3.4:1,1.2.3.5:1", "::1", "h:port"])
def test_target_forms_only_grpcio_knows_are_refused(target: str) -> None:
    with pytest.raises(ValueError):
        parse_target(target)
