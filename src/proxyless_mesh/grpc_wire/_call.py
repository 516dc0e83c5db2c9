"""One HTTP/2 connection per channel, on the running asyncio loop, read by one
task that hands each stream its messages and final status."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from proxyless_mesh.grpc_wire._goaway import Goaway, GoawayFilter
from proxyless_mesh.grpc_wire._status import GrpcCallError, parse_target

if TYPE_CHECKING:
    import h2.connection

__all__ = ["H2Channel", "StreamCall"]

Metadata = Iterable[tuple[str, str | bytes]]
T = TypeVar("T")

#: Our receive windows (stream and connection): an xDS response can be a few
#: MB, and acknowledging 64 KiB at a time would cost a round trip each.
_WINDOW = 16 * 1024 * 1024
_READ_SIZE = 65536
#: grpcio's default limit on a received message (4 MiB): a bigger one fails the
#: call with RESOURCE_EXHAUSTED, as with grpcio.
MAX_RECEIVE = 4 * 1024 * 1024


def _encode_metadata(metadata: Metadata) -> list[tuple[bytes, bytes]]:
    out = []
    for key, value in metadata:
        if key.endswith("-bin"):
            raw = value if isinstance(value, bytes) else value.encode()
            value = base64.b64encode(raw).rstrip(b"=")
        out.append((key.lower().encode(), value if isinstance(value, bytes) else value.encode()))
    return out


class _Stream:
    """What the reader task delivers to one call: messages, then a status."""

    def __init__(self, stream_id: int, max_receive: int) -> None:
        self.id = stream_id
        self.max_receive = max_receive
        self.refused = False  # we ended it (bad message): the peer gets RST_STREAM
        self.messages: asyncio.Queue[bytes | GrpcCallError | None] = asyncio.Queue()
        self.buffer = bytearray()
        self.http_status: str | None = None
        self.done = False

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 5:
            length = int.from_bytes(self.buffer[1:5], "big")
            if length > self.max_receive:
                self.refuse("RESOURCE_EXHAUSTED", f"message of {length} bytes > {self.max_receive}")
                return
            if self.buffer[0]:
                self.refuse("INTERNAL", "compressed message (none was offered)")
                return
            if len(self.buffer) < 5 + length:
                return
            self.messages.put_nowait(bytes(self.buffer[5 : 5 + length]))
            del self.buffer[: 5 + length]

    def end(self, headers: dict[bytes, bytes]) -> None:
        """Trailers (or a trailers-only response) arrived: the call's status."""
        status = headers.get(b"grpc-status")
        if status is None:
            http = self.http_status or "no :status"
            self.finish(
                GrpcCallError("UNKNOWN" if http == "200" else "UNAVAILABLE", f"HTTP {http}")
            )
        elif status == b"0":
            self.finish(None)
        else:
            message = headers.get(b"grpc-message", b"").decode(errors="replace")
            self.finish(GrpcCallError.from_status(status.decode(), message))

    def refuse(self, code: str, details: str) -> None:
        self.buffer.clear()
        self.refused = not self.done
        self.finish(GrpcCallError(code, details))

    def finish(self, outcome: GrpcCallError | None) -> None:
        if not self.done:
            self.done = True
            self.messages.put_nowait(outcome)


_CANCEL = 8  # HTTP/2 error code CANCEL
_NO_ERROR = 0


class _Connection:
    """The socket, h2's state machine and the reader task."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_receive: int
    ) -> None:
        import h2.config
        import h2.connection
        import h2.settings

        self.reader, self.writer = reader, writer
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2: h2.connection.H2Connection = h2.connection.H2Connection(config)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_WINDOW - 65535)
        self.streams: dict[int, _Stream] = {}
        self.max_receive = max_receive
        self.ready = asyncio.get_running_loop().create_future()
        self.window = asyncio.Event()  # set when the peer opens a send window
        self.closed: GrpcCallError | None = None
        # After a GOAWAY: no new streams here; those it promised finish, then we close.
        self.goaway: Goaway | None = None
        self.going_away = asyncio.Event()  # set with `goaway`
        self._goaway_filter = GoawayFilter()
        self.flush()
        self.task = asyncio.ensure_future(self._read_loop())

    @property
    def usable(self) -> bool:
        """Whether a new call may start here (open, and no GOAWAY received)."""
        return self.closed is None and self.goaway is None

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.closed is None:
            self.writer.write(data)

    async def _read_loop(self) -> None:
        import h2.exceptions

        error = GrpcCallError("UNAVAILABLE", "connection closed by the server")
        try:
            while True:
                data = await self.reader.read(_READ_SIZE)
                if not data:
                    break
                data, goaways = self._goaway_filter.feed(data)
                if data:
                    for event in self.h2.receive_data(data):
                        self._on_event(event)
                self.flush()
                for goaway in goaways:
                    self._on_goaway(goaway)
        except (OSError, h2.exceptions.ProtocolError) as exc:
            error = GrpcCallError("UNAVAILABLE", f"connection failed: {exc!r}")
        finally:
            self.close(error)

    def _on_event(self, event: Any) -> None:
        import h2.events as ev

        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, ev.DataReceived):
            # Even for a stream we cancelled: the connection window must reopen.
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        if isinstance(event, ev.RemoteSettingsChanged):
            if not self.ready.done():
                self.ready.set_result(None)
            self.window.set()
        elif isinstance(event, ev.WindowUpdated):
            self.window.set()
        elif stream is None:
            return
        elif isinstance(event, ev.ResponseReceived):
            headers = dict(event.headers)
            stream.http_status = headers.get(b":status", b"").decode()
            if b"grpc-status" in headers:
                stream.end(headers)
        elif isinstance(event, ev.DataReceived):
            stream.feed(event.data)
        elif isinstance(event, ev.TrailersReceived):
            stream.end(dict(event.headers))
        elif isinstance(event, ev.StreamReset):
            stream.finish(GrpcCallError("UNAVAILABLE", f"stream reset ({event.error_code!r})"))
        elif isinstance(event, ev.StreamEnded):
            stream.end({})  # no trailers: finishes only if nothing did before
        if stream is not None and stream.done:
            if stream.refused:
                self.h2.reset_stream(stream.id, _CANCEL)
            self.release(stream.id)

    def _on_goaway(self, goaway: Goaway) -> None:
        """Streams above its last-stream-id were not processed: they fail
        UNAVAILABLE (safe to retry); the others go on to their end (see _goaway.py)."""
        self.goaway = goaway
        self.going_away.set()
        code = "NO_ERROR" if goaway.error_code == _NO_ERROR else f"error {goaway.error_code}"
        error = GrpcCallError("UNAVAILABLE", f"GOAWAY ({code}): the server did not take the call")
        for stream in list(self.streams.values()):
            if stream.id > goaway.last_stream_id:
                stream.finish(error)
                self.streams.pop(stream.id, None)
        self._close_if_drained()

    def release(self, stream_id: int) -> None:
        """Forget a finished stream; the last one on a GOAWAY'd connection closes it."""
        self.streams.pop(stream_id, None)
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self.goaway is not None and not self.streams and self.closed is None:
            self.flush()
            self.close(GrpcCallError("UNAVAILABLE", "connection closed after GOAWAY"))

    def close(self, error: GrpcCallError) -> None:
        if self.closed is None:
            self.closed = error
        for stream in list(self.streams.values()):
            stream.finish(error)
        self.streams.clear()
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: no "never retrieved" warning
        self.window.set()
        self.writer.close()

    async def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """DATA within the peer's flow-control windows, then drain the socket."""
        import h2.exceptions

        try:
            await self._send(stream_id, data, end)
        except h2.exceptions.H2Error as exc:  # the stream ended meanwhile
            raise GrpcCallError("UNAVAILABLE", f"cannot send: {exc!r}") from None
        except OSError as exc:
            raise GrpcCallError("UNAVAILABLE", f"connection failed: {exc!r}") from None

    async def _send(self, stream_id: int, data: bytes, end: bool) -> None:
        view = memoryview(data)
        while True:
            if self.closed is not None:
                raise self.closed
            room = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if room <= 0 and view:
                self.window.clear()
                await self.window.wait()
                continue
            chunk, view = view[:room], view[room:]
            self.h2.send_data(stream_id, chunk.tobytes(), end_stream=end and not view)
            self.flush()
            if not view:
                break
        await self.writer.drain()


class H2Channel:
    """A gRPC channel to one target, connected on first use and reconnected
    on the next call after the connection is lost (no retries: callers keep
    their own backoff, as with grpcio)."""

    def __init__(
        self,
        target: str,
        *,
        user_agent: str = "proxyless-mesh",
        max_receive_message_length: int = MAX_RECEIVE,
    ) -> None:
        self.target = target
        self._max_receive = max_receive_message_length
        self._target = parse_target(target)
        self._user_agent = user_agent
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._draining: set[_Connection] = set()  # GOAWAY'd, finishing their calls

    async def connection(self) -> _Connection:
        """The live connection, opening one (TCP, preface, SETTINGS) if needed
        (also after a GOAWAY: the old one only finishes its calls); raises
        GrpcCallError(UNAVAILABLE) if the target cannot be reached."""
        current = self._connection
        if current is not None and current.usable:
            return current
        if current is not None and current.closed is None:
            self._draining.add(current)
        self._draining = {c for c in self._draining if c.closed is None}
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> _Connection:
        t = self._target
        try:
            if t.unix_path is not None:
                reader, writer = await asyncio.open_unix_connection(t.unix_path)
            else:
                reader, writer = await asyncio.open_connection(t.host, t.port)
        except OSError as exc:
            raise GrpcCallError("UNAVAILABLE", f"cannot connect to {self.target}: {exc}") from None
        connection = _Connection(reader, writer, self._max_receive)
        await connection.ready
        self._connection = connection
        return connection

    async def wait_ready(self, *, initial: float = 0.2, cap: float = 2.0) -> None:
        """Return once connected, retrying with jittered backoff meanwhile (as
        grpcio's `initial/max_reconnect_backoff_ms` for a channel asked to connect)."""
        delay = initial
        while True:
            try:
                await self.connection()
                return
            except GrpcCallError:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(cap, delay * 1.6)

    def stream(
        self,
        path: str,
        serialize: Callable[[Any], bytes],
        deserialize: Callable[[bytes], T],
        metadata: Metadata = (),
    ) -> StreamCall[T]:
        """A bidirectional stream call on this channel (opened by `start`)."""
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", self._target.authority.encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", self._user_agent.encode()),
            *_encode_metadata(metadata),
        ]
        return StreamCall(self, headers, serialize, deserialize)

    async def unary(
        self,
        path: str,
        request: bytes,
        *,
        metadata: Metadata = (),
        timeout: float | None = None,
    ) -> bytes:
        """One request, one response (bytes), within `timeout` seconds."""
        extra = list(metadata)
        if timeout is not None:
            extra.append(("grpc-timeout", f"{max(1, math.ceil(timeout * 1000))}m"))
        call = self.stream(path, bytes, bytes, extra)
        try:
            async with asyncio.timeout(timeout):
                await call.start()
                await call.write(request, end=True)
                response = await call.read()
                if response is None:
                    raise GrpcCallError("INTERNAL", "the server sent no response message")
                await call.read()  # the status
                return response
        except TimeoutError:
            raise GrpcCallError("DEADLINE_EXCEEDED", f"no answer within {timeout:g}s") from None
        finally:
            call.cancel()

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        connections = {*self._draining, *([self._connection] if self._connection else [])}
        self._connection, self._draining = None, set()
        for connection in connections:
            connection.close(GrpcCallError("CANCELLED", "channel closed"))
        if connections:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([c.task for c in connections])


class StreamCall(Generic[T]):
    """One call: `start`, then `write` and `read` (None once the server ended
    the call with OK; GrpcCallError for any other status), `cancel` at the end."""

    def __init__(
        self,
        channel: H2Channel,
        headers: list[tuple[bytes, bytes]],
        serialize: Callable[[Any], bytes],
        deserialize: Callable[[bytes], T],
    ) -> None:
        self._channel = channel
        self._headers = headers
        self._serialize, self._deserialize = serialize, deserialize
        self._connection: _Connection | None = None
        self._stream: _Stream | None = None
        self._started: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Connect if needed and send the headers (grpcio's wait_for_connection).
        `write` and `read` start the call too, so a writer may begin at once."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        import h2.exceptions

        connection = await self._channel.connection()
        try:
            stream_id = connection.h2.get_next_available_stream_id()
            stream = _Stream(stream_id, connection.max_receive)
            self._stream = connection.streams[stream_id] = stream
            self._connection = connection
            connection.h2.send_headers(stream_id, self._headers)
            connection.flush()
            await connection.writer.drain()
        except (h2.exceptions.H2Error, OSError) as exc:
            raise GrpcCallError("UNAVAILABLE", f"cannot start the call: {exc!r}") from None

    async def write(self, message: Any, *, end: bool = False) -> None:
        await self.start()
        assert self._connection is not None and self._stream is not None
        if self._stream.done:
            raise GrpcCallError("UNAVAILABLE", "the call has ended")
        data = self._serialize(message)
        frame = b"\x00" + len(data).to_bytes(4, "big") + data
        await self._connection.send(self._stream.id, frame, end=end)

    async def read(self) -> T | None:
        await self.start()
        assert self._stream is not None
        item = await self._stream.messages.get()
        if isinstance(item, GrpcCallError):
            raise item
        if item is None:
            self._stream.messages.put_nowait(None)  # later reads see the end too
            return None
        return self._deserialize(item)

    def cancel(self) -> None:
        """RST_STREAM(CANCEL) unless the call already ended."""
        import h2.errors
        import h2.exceptions

        if self._started is not None and not self._started.done():
            self._started.cancel()
        stream, connection = self._stream, self._connection
        if stream is None or connection is None or connection.closed is not None:
            return
        if not stream.done:
            stream.finish(GrpcCallError("CANCELLED", "cancelled by the client"))
        with contextlib.suppress(h2.exceptions.H2Error):
            connection.h2.reset_stream(stream.id, h2.errors.ErrorCodes.CANCEL)
            connection.flush()
        connection.release(stream.id)
