"""Head-with-body writes (client) and one write per loop turn (server):
integrations/_coalescing.py. The network below is a recorder here (the logic
is what is tested); tests/integration covers real connections through them."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import httpcore

from proxyless_mesh.integrations._coalescing import (
    JOIN_LIMIT,
    AsyncHeadHoldingStream,
    CorkedTransport,
    HeadHoldingStream,
    hold_heads,
)

HEAD = b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\n"


class Recorder(httpcore.NetworkStream):
    def __init__(self, alpn: str | None = None) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.alpn = alpn

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.events.append(("write", buffer))

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.events.append(("read", b""))
        return b"HTTP/1.1 200 OK\r\n\r\n"

    def close(self) -> None:
        self.events.append(("close", b""))

    def start_tls(self, ssl_context: Any, server_hostname: Any = None, timeout: Any = None) -> Any:
        self.events.append(("start_tls", b""))
        return Recorder(alpn="http/1.1")

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object" and self.alpn is not None:
            return _Alpn(self.alpn)
        return None


class _Alpn:
    def __init__(self, alpn: str) -> None:
        self.alpn = alpn

    def selected_alpn_protocol(self) -> str:
        return self.alpn


def test_head_and_body_leave_in_one_write() -> None:
    inner = Recorder()
    stream = HeadHoldingStream(inner)
    stream.write(HEAD)
    assert inner.events == []  # held
    stream.write(b"body")
    stream.write(b"")  # h11's end of a content-length body
    stream.read(65536)
    assert inner.events == [("write", HEAD + b"body"), ("read", b"")]


def test_every_request_on_a_connection_is_joined() -> None:
    inner = Recorder()
    stream = HeadHoldingStream(inner)
    for _ in range(3):
        stream.write(HEAD)
        stream.write(b"body")
        stream.read(65536)
    assert [e for e in inner.events if e[0] == "write"] == [("write", HEAD + b"body")] * 3


def test_a_request_without_body_goes_out_at_its_end_or_read() -> None:
    inner = Recorder()
    stream = HeadHoldingStream(inner)
    stream.write(b"GET / HTTP/1.1\r\n\r\n")
    stream.write(b"")  # end of message: sent now, not at the read
    assert inner.events == [("write", b"GET / HTTP/1.1\r\n\r\n")]
    inner.events.clear()
    stream.write(b"GET / HTTP/1.1\r\n\r\n")
    stream.read(65536)  # no end-of-message write: the read sends it first
    assert inner.events == [("write", b"GET / HTTP/1.1\r\n\r\n"), ("read", b"")]


def test_streamed_body_chunks_after_the_first_are_not_held() -> None:
    inner = Recorder()
    stream = HeadHoldingStream(inner)
    stream.write(HEAD)
    stream.write(b"one")
    stream.write(b"two")
    assert inner.events == [("write", HEAD + b"one"), ("write", b"two")]


def test_a_large_first_chunk_is_not_copied_onto_the_head() -> None:
    inner = Recorder()
    stream = HeadHoldingStream(inner)
    big = b"x" * (JOIN_LIMIT + 1)
    stream.write(HEAD)
    stream.write(big)
    assert inner.events == [("write", HEAD), ("write", big)]


def test_close_drops_a_held_head() -> None:
    inner = Recorder()
    stream = HeadHoldingStream(inner)
    stream.write(HEAD)
    stream.close()
    assert inner.events == [("close", b"")]


def test_tls_upgrade_sends_what_was_held_and_keeps_holding_on_http11() -> None:
    inner = Recorder()
    stream = HeadHoldingStream(inner)
    stream.write(b"CONNECT a:443 HTTP/1.1\r\n\r\n")
    tls = stream.start_tls(ssl.create_default_context())
    assert inner.events == [("write", b"CONNECT a:443 HTTP/1.1\r\n\r\n"), ("start_tls", b"")]
    assert isinstance(tls, HeadHoldingStream)


def test_only_http11_is_held() -> None:
    assert hold_heads(Recorder(alpn="http/1.1"))
    assert hold_heads(Recorder())  # plain TCP
    assert not hold_heads(Recorder(alpn="h2"))


def test_async_twin_joins_the_same_way() -> None:
    class AsyncRecorder(httpcore.AsyncNetworkStream):
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        async def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self.writes.append(buffer)

        async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return b""

    async def scenario() -> list[bytes]:
        inner = AsyncRecorder()
        stream = AsyncHeadHoldingStream(inner)
        await stream.write(HEAD)
        await stream.write(b"body")
        await stream.read(65536)
        await stream.write(b"GET / HTTP/1.1\r\n\r\n")
        await stream.read(65536)
        return inner.writes

    assert asyncio.run(scenario()) == [HEAD + b"body", b"GET / HTTP/1.1\r\n\r\n"]


class TransportRecorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


async def test_writes_of_one_loop_turn_leave_as_one() -> None:
    raw = TransportRecorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n"
    corked.write(head)
    corked.write(b"body")
    assert raw.writes == [] and corked.get_write_buffer_size() == len(head) + 4
    await asyncio.sleep(0)  # the end of this turn
    assert raw.writes == [head + b"body"]
    corked.write(b"next")
    await asyncio.sleep(0)
    assert raw.writes[-1] == b"next"
    assert corked.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest goes through


async def test_close_flushes_and_abort_drops() -> None:
    raw = TransportRecorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"last words")
    corked.close()
    assert raw.writes == [b"last words"] and raw.closing
    await asyncio.sleep(0)
    assert raw.writes == [b"last words"]  # the scheduled flush finds nothing

    raw = TransportRecorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"never")
    corked.abort()
    await asyncio.sleep(0)
    assert raw.writes == [] and raw.aborted
