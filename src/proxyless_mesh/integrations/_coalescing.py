"""One write where HTTP/1.1 over TLS would make two.

httpcore sends a request as two writes (the head, then the body) and uvicorn
answers with two (the head, then the body). Over TLS every write is a record
of its own and a send of its own, and the peer wakes up, decrypts and parses
twice: for a 1 KB exchange that is a measurable share of what mTLS costs a
request here (see benchmarks/README.md, "mTLS"). These wrappers join them:

- `HeadHoldingStream` / `AsyncHeadHoldingStream` (client, httpcore network
  streams): the first write after the previous answer was read - the request
  head - is held until the next write (the body's first chunk), an empty
  write (the request ended) or the first read (a request without a body).
  Nothing else is delayed: a streamed body's later chunks go out as they
  come. HTTP/1.1 only: there a connection carries one request at a time and
  always writes before it reads. An HTTP/2 connection is shared by requests
  on other threads, and a held frame could wait on another request's read.
  Used for mTLS connections only: on plain TCP an A/B on the bench showed no
  gain (the records are what cost).
- `CorkedTransport` (server, asyncio transport under uvicorn): writes made in
  one turn of the event loop leave together at the end of that turn, so a
  response whose head and body are sent back to back is one record.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import httpcore

__all__ = [
    "AsyncHeadHoldingStream",
    "CorkedTransport",
    "HeadHoldingStream",
    "hold_heads",
]

JOIN_LIMIT = 16 * 1024
"""Above this a body chunk is not copied onto the head: the saving is one
record out of many."""


def hold_heads(stream: Any) -> bool:
    """Whether a TLS stream carries HTTP/1.1 (ALPN not h2)."""
    ssl_object: ssl.SSLObject | ssl.SSLSocket | None = stream.get_extra_info("ssl_object")
    return ssl_object is None or ssl_object.selected_alpn_protocol() != "h2"


class HeadHoldingStream(httpcore.NetworkStream):
    """A sync network stream that sends a request head with its body."""

    __slots__ = ("_fresh", "_held", "_stream")

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream
        self._held: bytes | None = None
        self._fresh = True  # the next write starts a request: its head

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if buffer and len(buffer) <= JOIN_LIMIT:
                self._stream.write(held + buffer, timeout)
                return
            self._stream.write(held, timeout)
        elif self._fresh and buffer:
            self._fresh = False
            self._held = buffer
            return
        if buffer:
            self._stream.write(buffer, timeout)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        held = self._held
        if held is not None:
            self._held = None
            self._stream.write(held, timeout)
        self._fresh = True
        return self._stream.read(max_bytes, timeout)

    def close(self) -> None:
        self._held = None  # an unsent head belongs to a request given up
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        held, self._held = self._held, None
        if held is not None:
            self._stream.write(held, timeout)
        tls = self._stream.start_tls(ssl_context, server_hostname, timeout)
        return HeadHoldingStream(tls) if hold_heads(tls) else tls

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class AsyncHeadHoldingStream(httpcore.AsyncNetworkStream):
    """The asyncio twin of HeadHoldingStream."""

    __slots__ = ("_fresh", "_held", "_stream")

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._held: bytes | None = None
        self._fresh = True

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if buffer and len(buffer) <= JOIN_LIMIT:
                await self._stream.write(held + buffer, timeout)
                return
            await self._stream.write(held, timeout)
        elif self._fresh and buffer:
            self._fresh = False
            self._held = buffer
            return
        if buffer:
            await self._stream.write(buffer, timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        held = self._held
        if held is not None:
            self._held = None
            await self._stream.write(held, timeout)
        self._fresh = True
        return await self._stream.read(max_bytes, timeout)

    async def aclose(self) -> None:
        self._held = None
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        held, self._held = self._held, None
        if held is not None:
            await self._stream.write(held, timeout)
        tls = await self._stream.start_tls(ssl_context, server_hostname, timeout)
        return AsyncHeadHoldingStream(tls) if hold_heads(tls) else tls

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class CorkedTransport:
    """An asyncio transport whose writes within one loop turn leave as one.

    Everything but writing and closing goes to the wrapped transport. The
    protocol stays registered on the wrapped one, so flow control
    (pause_writing / resume_writing) works as before; the held bytes are at
    most what one turn wrote and leave at the end of it."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [bytes(data)]
            self._loop.call_soon(self._flush)
        else:
            pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if not pending or self._transport.is_closing():
            return
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        held = sum(map(len, self._pending)) if self._pending else 0
        return held + self._transport.get_write_buffer_size()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
