"""The ADS port on the native transport (`meshctl serve --xds-engine native`).

At 10,000 streams about 90 % of a push's cost per stream was inside grpc.aio
(its event-loop side and its own threads). Here Rust (native_ads/, module
`proxyless_mesh_ads`) owns the sockets, HTTP/2 and gRPC framing on its own
threads; this module turns its batched events into calls of the same grpc
handlers (`grpc.GenericRpcHandler`s: ADS and the registration service), each
given a `NativeContext` with what those handlers use of grpc.aio's context.
The event loop wakes on one descriptor (`loop.add_reader`) per batch of events,
not per stream.

A write hands the response's bytes object to Rust (shared by every stream it
goes to, never copied per stream) and returns at once while the stream's
backlog is under `proxyless_mesh_ads.WRITE_BACKLOG`; beyond it the write
waits until HTTP/2 flow control drains it, as a grpc.aio write blocks on a
peer that does not read.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple

import grpc

log = logging.getLogger(__name__)

__all__ = ["NativeContext", "NativeGrpcServer", "native_engine_available"]

_OPEN, _MESSAGE, _HALF_CLOSE, _CLOSED, _WRITABLE = range(5)
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # untyped in the stubs


def native_engine_available() -> bool:
    """Whether the native transport is built into this environment."""
    try:
        importlib.import_module("proxyless_mesh_ads")
    except ImportError:
        return False
    return True


class _CallDetails(NamedTuple):
    """What `GenericRpcHandler.service` reads (grpc.HandlerCallDetails)."""

    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...]


class NativeContext:
    """One call's context: read/write/abort/peer/invocation_metadata as in
    grpc.aio.ServicerContext, over the native engine."""

    __slots__ = (
        "_cancelled",
        "_deserialize",
        "_ended",
        "_engine",
        "_finished",
        "_id",
        "_metadata",
        "_peer",
        "_reader",
        "_requests",
        "_serialize",
        "_writer",
        "task",
    )

    def __init__(
        self,
        engine: Any,
        call_id: int,
        peer: str,
        metadata: tuple[tuple[str, str | bytes], ...],
        handler: grpc.RpcMethodHandler[Any, Any],
    ) -> None:
        self._engine = engine
        self._id = call_id
        self._peer = peer
        self._metadata = metadata
        self._deserialize: Callable[[bytes], Any] | None = handler.request_deserializer
        self._serialize: Callable[[Any], bytes] | None = handler.response_serializer
        self._requests: deque[bytes] = deque()
        self._ended = False
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._finished = False
        self._cancelled = False
        self.task: asyncio.Task[None] | None = None

    @property
    def call_id(self) -> int:
        return self._id

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._finished or self._cancelled

    async def read(self) -> Any:
        """The next request, or grpc.aio.EOF once the client half-closed."""
        while not self._requests:
            if self._ended or self._cancelled:
                return _EOF
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        data = self._requests.popleft()
        return data if self._deserialize is None else self._deserialize(data)

    async def write(self, message: Any) -> None:
        data = message if self._serialize is None else self._serialize(message)
        if self._finished or self._cancelled:
            raise asyncio.InvalidStateError("the call is over")
        if not self._engine.send(self._id, data):
            self._writer = asyncio.get_running_loop().create_future()
            try:
                await self._writer
            finally:
                self._writer = None

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: Any) -> None:
        self.finish(code, details)
        raise grpc.aio.AbortError()  # as grpc.aio does; the call runner expects it

    def finish(self, code: grpc.StatusCode, details: str = "") -> None:
        """End the call with a status (once)."""
        if not self._finished and not self._cancelled:
            self._finished = True
            self._engine.finish(self._id, code.value[0], details)

    async def requests(self) -> AsyncIterator[Any]:
        """The request iterator handed to stream-stream handlers."""
        while (request := await self.read()) is not _EOF:
            yield request

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def on_message(self, data: bytes) -> None:
        self._requests.append(data)
        self._wake_reader()

    def on_half_close(self) -> None:
        self._ended = True
        self._wake_reader()

    def on_writable(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._writer.set_result(None)

    def on_closed(self) -> None:
        """The client went away (reset, or its connection closed): cancel the
        handler as grpc.aio does."""
        self._cancelled = True
        if self.task is not None:
            self.task.cancel()


class NativeGrpcServer:
    """grpc generic handlers served on one port by the native transport."""

    def __init__(self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]], threads: int = 1):
        self._handlers = tuple(handlers)
        self._threads = threads
        self._engine: Any = None
        self._calls: dict[int, NativeContext] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, address: str, *, reuseport: bool = True) -> int:
        """Listen on "HOST:PORT" (port 0 picks one; SO_REUSEPORT as grpc sets
        it, so worker processes share a port); returns the bound port."""
        try:
            native = importlib.import_module("proxyless_mesh_ads")
        except ImportError as exc:
            raise RuntimeError(
                "the native xDS engine is not built (make install builds native_ads/)"
            ) from exc
        self._engine = native.Engine(address, reuseport=reuseport, threads=self._threads)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._engine.fileno(), self._on_events)
        return int(self._engine.port)

    @property
    def stream_count(self) -> int:
        return 0 if self._engine is None else int(self._engine.stream_count())

    def _on_events(self) -> None:
        calls = self._calls
        for event in self._engine.poll():
            kind, call_id = event[0], event[1]
            if kind == _MESSAGE:
                if (call := calls.get(call_id)) is not None:
                    call.on_message(event[2])
            elif kind == _WRITABLE:
                if (call := calls.get(call_id)) is not None:
                    call.on_writable()
            elif kind == _OPEN:
                self._open(call_id, event[2], tuple(event[3]), event[4])
            elif kind == _HALF_CLOSE:
                if (call := calls.get(call_id)) is not None:
                    call.on_half_close()
            elif (call := calls.pop(call_id, None)) is not None:
                call.on_closed()

    def _open(
        self, call_id: int, method: str, metadata: tuple[tuple[str, str | bytes], ...], peer: str
    ) -> None:
        details = _CallDetails(method, metadata)
        handler = None
        for generic in self._handlers:
            if (handler := generic.service(details)) is not None:  # type: ignore[arg-type]
                break
        if handler is None or handler.request_streaming != handler.response_streaming:
            self._engine.finish(call_id, grpc.StatusCode.UNIMPLEMENTED.value[0], "")
            return
        call = NativeContext(self._engine, call_id, peer, metadata, handler)
        self._calls[call_id] = call
        assert self._loop is not None
        call.task = self._loop.create_task(self._run(call, handler))

    async def _run(self, call: NativeContext, handler: grpc.RpcMethodHandler[Any, Any]) -> None:
        try:
            if handler.request_streaming:
                result = handler.stream_stream(call.requests(), call)  # type: ignore[misc,arg-type]
                if inspect.isasyncgen(result):
                    async for response in result:
                        await call.write(response)
                else:
                    await result  # type: ignore[misc]
            else:
                request = await call.read()
                if request is _EOF:
                    call.finish(grpc.StatusCode.INTERNAL, "the client sent no request")
                    return
                response = await handler.unary_unary(request, call)  # type: ignore[misc,arg-type]
                await call.write(response)
            call.finish(grpc.StatusCode.OK)
        except grpc.aio.AbortError:
            pass  # the status is set
        except asyncio.CancelledError:
            if not call.cancelled():
                call.finish(grpc.StatusCode.CANCELLED, "server shutting down")
                raise
        except Exception:
            # Stated reason: a handler's failure ends its call with UNKNOWN,
            # as grpc.aio does, never the server.
            log.exception("call %s from %s failed", call.task and call.task.get_name(), call.peer())
            call.finish(grpc.StatusCode.UNKNOWN, "Unexpected error in the handler")
        finally:
            self._calls.pop(call.call_id, None)

    async def stop(self, grace: float | None) -> None:
        """Say GOAWAY, wait up to `grace` seconds for calls to end, then drop
        the connections and cancel what is left."""
        if self._engine is None:
            return
        engine, self._engine = self._engine, None
        assert self._loop is not None
        self._loop.remove_reader(engine.fileno())
        await asyncio.to_thread(engine.close, 0.0 if grace is None else grace)
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.on_closed()
