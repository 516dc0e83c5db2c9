"""The ADS server: State of the World xDS over one bidirectional gRPC stream
(and Delta xDS beside it, delta.py, sharing the stream life described here).

Per stream, a reader task applies each DiscoveryRequest to the client's record (ACK,
NACK, subscription change) and queues any response; the RPC handler itself is the one
writer. Config changes are pushed through the same bounded outbox, only to streams whose
resources actually changed. A stream that cannot keep up is closed (the client
reconnects and gets a fresh State of the World) instead of stalling the push to everyone
else. A client that stops reading altogether leaves the stream's last write blocked by
HTTP/2 flow control, and grpc.aio can then neither finish that write nor send a status
behind it: after WRITE_STALL_GRACE the stream is forgotten (no longer pushed to,
counted, or holding its client kind or self-registration), while its handler still waits
on that one write. Should the client read again (a paused process resumes), the write
completes and the stream ends with UNAVAILABLE, so it reconnects rather than sit on a
stream nobody feeds; if it never does, the call goes with its connection.

Built for 10,000 streams on one event loop: responses are serialized once per
(client kind, type, subscription) and the same bytes queued on every stream
(responses.py), so a push costs each stream a dict lookup, a tuple compare and
an append; per-stream state is slotted and shares what it can. A push that
removes clusters costs streams two more responses each (the union of old and
new first, the removal last), shared the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterable, Sequence
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from mesh_control_plane.metrics import ControlPlaneMetrics
from mesh_control_plane.translate import NodeInfo
from mesh_control_plane.xds.clients import (
    MAKE_BEFORE_BREAK,
    WILDCARD_TYPES,
    ClientRecord,
    Subscription,
    TypeState,
    short_type_name,
)
from mesh_control_plane.xds.delta import DeltaResponses, DeltaStreams
from mesh_control_plane.xds.native_engine import NativeGrpcServer, native_engine_available
from mesh_control_plane.xds.responses import PreparedResponse, ResponseCache
from mesh_control_plane.xds.snapshot import SnapshotCache
from mesh_control_plane.xds.streams import BadNode, Stream, StreamObserver, push_order
from mesh_control_plane.xds.tuning import SERVER_OPTIONS

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 64
WRITE_STALL_GRACE = 5.0
"""Seconds a stream already closed as too slow may stay blocked in its last
write (a peer that reads slowly still drains it) before it is forgotten."""

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

XDS_ENGINES = ("grpc", "native")
"""The xDS port's transports: grpc.aio, or the Rust one (native_engine.py)."""
DEFAULT_XDS_ENGINE = os.environ.get("MESH_XDS_ENGINE") or (
    "native" if native_engine_available() else "grpc"
)
"""The transport when none is named: `$MESH_XDS_ENGINE` (how the test suite runs
on either), else native when it is built (half the CPU per push, the 10,000 and
50,000-client targets of benchmarks/README.md), else grpc."""

_Context = grpc.aio.ServicerContext[Any, bytes]


def _subscription(type_url: str, names: list[str], previous: Subscription | None) -> Subscription:
    """Read resource_names the SotW way: `*` is an explicit wildcard; an empty
    list is the legacy wildcard for LDS/CDS only while the client has not named
    resources before (after that, empty means it wants none)."""
    wanted = frozenset(names)
    if "*" in wanted:
        return Subscription(True, wanted - {"*"})
    legacy = type_url in WILDCARD_TYPES and (previous is None or previous.wildcard)
    if not wanted and legacy:
        return Subscription(True, frozenset())
    return Subscription(False, wanted)


class AdsServicer:
    """Serves the snapshot cache to any number of ADS streams.

    Its stream method writes serialized responses (bytes): register it with
    `method_handlers()`, not the generated servicer helper, whose serializer
    would try to serialize them again.
    """

    def __init__(
        self,
        cache: SnapshotCache,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        metrics: ControlPlaneMetrics | None = None,
        observer: StreamObserver | None = None,
        write_stall_grace: float = WRITE_STALL_GRACE,
    ) -> None:
        self._cache = cache
        self._queue_size = queue_size
        self._write_stall_grace = write_stall_grace
        self._observer = observer
        self.metrics = metrics or ControlPlaneMetrics()
        self._streams: set[Stream] = set()
        self._responses = ResponseCache(cache.resources)
        self._responses.reset(cache.version)
        self._delta_responses = DeltaResponses(cache.resources)
        self._delta_responses.reset(cache.version)
        self._delta = DeltaStreams(self._delta_responses, self.metrics, self._enqueue)
        self._remove_listener = cache.add_listener(self._on_config_change)

    def method_handlers(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The ADS service for `grpc.aio.Server.add_generic_rpc_handlers`:
        requests are parsed, responses go out as the bytes they already are
        (a None serializer is grpc's pass-through). State of the World and
        Delta are both served."""
        sotw = grpc.stream_stream_rpc_method_handler(
            self.StreamAggregatedResources,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=None,
        )
        delta = grpc.stream_stream_rpc_method_handler(
            self.DeltaAggregatedResources,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=None,
        )
        return grpc.method_handlers_generic_handler(
            ADS_SERVICE,
            {"StreamAggregatedResources": sotw, "DeltaAggregatedResources": delta},
        )

    def clients(self) -> list[ClientRecord]:
        """The record of every connected client, oldest first."""
        return sorted((s.record for s in self._streams), key=lambda r: r.connected_at)

    def detach(self) -> None:
        """Stop following the cache (the server is going away)."""
        self._remove_listener()

    def close_all(self, reason: str) -> None:
        """End every stream with UNAVAILABLE, so a shutdown need not wait for
        streams that would otherwise never end."""
        for stream in list(self._streams):
            self._close(stream, reason, level=logging.INFO)

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterable[discovery_pb2.DiscoveryRequest],
        context: _Context,
    ) -> None:
        """Writes with `context.write` and reads with `context.read` (the
        request iterator is not used): each skips an async generator layer,
        and at 10,000 streams per push those layers were a visible share."""
        del request_iterator  # read through context.read() instead
        await self._serve(Stream(ClientRecord(peer=context.peer())), context)

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterable[discovery_pb2.DeltaDiscoveryRequest],
        context: _Context,
    ) -> None:
        """Incremental xDS (delta.py), with the same stream life as SotW."""
        del request_iterator  # read through context.read() instead
        await self._serve(Stream(ClientRecord(peer=context.peer(), delta=True)), context)

    async def _serve(self, stream: Stream, context: _Context) -> None:
        """The one writer of a stream, until it closes."""
        self._streams.add(stream)
        reader = asyncio.create_task(self._read(stream, context))
        loop = asyncio.get_running_loop()
        try:
            while not stream.closing:
                if stream.outbox:
                    stream.writing = True
                    await context.write(stream.outbox.pop(0))  # type: ignore[arg-type]
                    stream.writing = False
                    continue
                waiter = stream.waiter = loop.create_future()
                await waiter
                stream.waiter = None
            if stream.close_reason is not None:
                await context.abort(stream.close_code, stream.close_reason)
        finally:
            reader.cancel()
            if stream.abandon is not None:
                stream.abandon.cancel()
            self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        """Drop everything the control plane holds for a stream that has
        ended, or whose peer stopped reading (once, whichever comes first)."""
        if stream.forgotten:
            return
        stream.forgotten = True
        self._streams.discard(stream)
        self.metrics.stream_closed(stream)
        if stream.node is not None:
            self._cache.release(stream.node)
        if self._observer is not None and stream.node_proto is not None:
            self._observer(stream.node_proto, False)
        log.info("ADS stream from %s (%s) ended", stream.record.node_id, stream.record.peer)

    def _abandon(self, stream: Stream) -> None:
        """A stream closed as too slow is still blocked in its last write:
        its peer does not read. Forget it now rather than when (if ever) the
        write completes."""
        if stream.writing and not stream.forgotten:
            log.warning(
                "ADS stream from %s (%s) does not read: its last write is blocked, "
                "forgetting the stream",
                stream.record.node_id,
                stream.record.peer,
            )
            self._forget(stream)

    async def _read(self, stream: Stream, context: _Context) -> None:
        try:
            # read() gives grpc.aio.EOF (untyped in the stubs) once the client half-closes
            if stream.record.delta:
                while isinstance(
                    request := await context.read(), discovery_pb2.DeltaDiscoveryRequest
                ):
                    if stream.closing:
                        return  # closed (maybe forgotten): it gets nothing more
                    if stream.node is None:
                        self._identify(stream, request.node)
                    self._delta.on_request(stream, request)
            else:
                while isinstance(request := await context.read(), discovery_pb2.DiscoveryRequest):
                    self._on_request(stream, request)
        except asyncio.CancelledError:
            raise
        except BadNode as exc:
            self._close(stream, str(exc), grpc.StatusCode.INVALID_ARGUMENT)
            return
        except Exception as exc:
            # Stated reason: whatever goes wrong with one client's request (a
            # malformed node, a translation bug for its kind) must end that
            # client's stream with a logged error, never the server's loop.
            if stream.closing:
                return  # we ended the stream; reading from it fails as a consequence
            log.exception("ADS stream from %s failed", stream.record.peer)
            self._close(stream, f"internal error: {exc}")
            return
        self._close(stream, None)

    def _on_request(self, stream: Stream, request: discovery_pb2.DiscoveryRequest) -> None:
        """Apply one request. A nonce that is not the latest sent for its type
        is stale (the client answered an older response) and ignored whole.
        Otherwise the request ACKs or NACKs (error_detail) the latest response;
        the same response is never re-sent because of a NACK. A response goes
        out when the type is new on the stream, when the subscribed names
        changed (gRPC changes them inside ACKs, even at the same version, and
        possibly inside a NACK), or when the request carries no nonce at all."""
        if stream.closing:
            return  # closed (maybe forgotten): whatever it asks, it gets nothing more
        stream.record.last_seen = time.time()  # the console's "last seen"
        if stream.node is None:
            self._identify(stream, request.node)
        # one string per type URL, not one per stream (it keys record.types)
        type_url = sys.intern(request.type_url)
        state = stream.record.types.get(type_url)
        nonce = request.response_nonce
        if state is not None and nonce and nonce != state.sent_nonce:
            log.debug(
                "%s: ignoring %s request with stale nonce %s (latest %s)",
                stream.record.node_id,
                short_type_name(type_url),
                nonce,
                state.sent_nonce,
            )
            return
        if state is not None and nonce:
            if request.HasField("error_detail"):
                state.nacked_version = request.version_info
                state.nack_message = request.error_detail.message
                self.metrics.nacked(stream, type_url, short_type_name(type_url))
                log.warning(
                    "NACK from %s for %s version %s: %s",
                    stream.record.node_id,
                    short_type_name(type_url),
                    request.version_info,
                    request.error_detail.message,
                )
            else:
                version = request.version_info
                # share the sent version's string rather than keep a copy per stream
                state.acked_version = (
                    state.sent_version if version == state.sent_version else version
                )
                state.nacked_version = state.nack_message = None
                self.metrics.acked(stream, type_url)
        subscription = _subscription(
            type_url, list(request.resource_names), state.subscription if state else None
        )
        if state is None:
            state = TypeState(subscription)
            stream.record.types[type_url] = state
            stream.order = push_order(stream.record.types)
        elif subscription == state.subscription and nonce:
            return  # an ACK or NACK of what was sent: nothing new to say
        state.subscription = subscription
        if stream.node is not None:
            response = self._responses.get(stream.node, stream.key, type_url, subscription)
            if response is state.sent:
                response = self._responses.fresh_copy(response)
            self._send(stream, state, response)

    def _identify(self, stream: Stream, node_proto: base_pb2.Node) -> None:
        stream.record.node_id = node_proto.id
        try:
            node = NodeInfo.from_proto(node_proto)
        except ValueError as exc:
            raise BadNode(str(exc)) from exc
        stream.node, stream.key = node, node.cache_key
        stream.record.user_agent = sys.intern(
            " ".join(p for p in (node_proto.user_agent_name, node_proto.user_agent_version) if p)
        )
        stream.record.kind = node.kind.name
        stream.record.set_identity(node_proto)
        self._cache.retain(node)
        if self._observer is not None:
            stream.node_proto = node_proto
            self._observer(node_proto, True)
        log.info(
            "ADS stream from %s (%s, %s, %s)",
            node_proto.id,
            stream.record.kind,
            stream.record.user_agent,
            stream.record.peer,
        )

    def _send(self, stream: Stream, state: TypeState, response: PreparedResponse) -> None:
        state.sent = response
        # the subscription object of a shared response is shared too: one
        # frozenset of names per distinct subscription, not one per stream
        state.subscription = response.subscription
        self._enqueue(stream, response.payload, short_type_name(response.type_url))

    def _enqueue(self, stream: Stream, payload: bytes, type_name: str) -> None:
        """Queue one response, or close a stream that cannot keep up."""
        self.metrics.pushed(type_name)
        if len(stream.outbox) >= self._queue_size:
            self._close(stream, f"client too slow: {self._queue_size} responses not yet written")
            return
        stream.outbox.append(payload)
        stream.wake()

    def _on_config_change(self, version: str) -> None:
        """Push `version` to every stream it changes, make-before-break (the
        order of Envoy's "eventual consistency considerations"): CDS, EDS, LDS,
        RDS, and only then the removal of stale clusters and their endpoints.
        A stream that would lose clusters (or endpoints) it was last sent gets
        first the new ones plus those (`ResponseCache.transition`), then the
        rest of the version, then the plain CDS/EDS of the version. That final
        response is the one its ACK must name for the round to converge (an
        ACK of the union carries a nonce no longer the latest: ignored)."""
        started = self.metrics.now()
        self._responses.reset(version)
        self._delta_responses.reset(version)
        round_pushes: list[tuple[Stream, str]] = []
        for stream in list(self._streams):
            if stream.node is None or stream.closing:
                continue
            if stream.record.delta:
                self._delta.push(stream, round_pushes)
            else:
                self._push(stream, round_pushes)
        self.metrics.config_pushed(started, (p for p in round_pushes if not p[0].closing))
        log.info(
            "version %s: %d responses pushed to %d streams",
            version,
            len(round_pushes),
            len(self._streams),
        )

    def _push(self, stream: Stream, round_pushes: list[tuple[Stream, str]]) -> None:
        """One SotW stream's share of a config change (see _on_config_change)."""
        node, responses = stream.node, self._responses
        assert node is not None  # checked by the caller
        types = stream.record.types
        finals: list[tuple[TypeState, PreparedResponse]] | None = None
        for type_url in stream.order:
            state = types[type_url]
            response = responses.get(node, stream.key, type_url, state.subscription)
            sent = state.sent
            if sent is None or response.fingerprint != sent.fingerprint:
                round_pushes.append((stream, type_url))
                union = None
                if sent is not None and type_url in MAKE_BEFORE_BREAK:
                    union = responses.transition(sent, response)
                if union is None:
                    self._send(stream, state, response)
                else:
                    finals = finals or []
                    finals.append((state, response))
                    if union is not sent:  # `sent` itself: it only removes, wait
                        self._send(stream, state, union)
            if stream.closing:
                break
        if finals is not None:
            for state, response in finals:
                if stream.closing:
                    break
                self._send(stream, state, response)

    def _close(
        self,
        stream: Stream,
        reason: str | None,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        level: int = logging.WARNING,
    ) -> None:
        """End the stream once the writer wakes (with `code` when there is a
        reason); drops what was queued, the client will get a fresh state."""
        if stream.closing:
            return
        stream.closing = True
        stream.close_reason, stream.close_code = reason, code
        if reason is not None:
            log.log(level, "closing ADS stream from %s: %s", stream.record.node_id, reason)
        stream.outbox.clear()
        stream.wake()
        if stream.writing:
            stream.abandon = asyncio.get_running_loop().call_later(
                self._write_stall_grace, self._abandon, stream
            )


class XdsServer:
    """A gRPC server carrying the ADS service: grpc.aio, or with
    `engine="native"` the Rust transport (native_engine.py), which serves the
    same handlers; holds the server reference (a collected grpc server stops
    serving)."""

    def __init__(
        self,
        cache: SnapshotCache,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        metrics: ControlPlaneMetrics | None = None,
        observer: StreamObserver | None = None,
        extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
        write_stall_grace: float = WRITE_STALL_GRACE,
        engine: str | None = None,
    ) -> None:
        """`extra_handlers` are served on the same port (the registration service);
        `engine`: one of XDS_ENGINES, by default DEFAULT_XDS_ENGINE."""
        engine = engine or DEFAULT_XDS_ENGINE
        if engine not in XDS_ENGINES:
            raise ValueError(f"unknown xDS engine {engine!r}: one of {', '.join(XDS_ENGINES)}")
        self.engine = engine
        self.servicer = AdsServicer(
            cache,
            queue_size=queue_size,
            metrics=metrics,
            observer=observer,
            write_stall_grace=write_stall_grace,
        )
        self._extra_handlers = tuple(extra_handlers)
        self._server: grpc.aio.Server | NativeGrpcServer | None = None
        self.port = 0

    async def start(self, address: str) -> int:
        """Listen on "HOST:PORT" (port 0 picks one); returns the bound port."""
        handlers = (self.servicer.method_handlers(), *self._extra_handlers)
        if self.engine == "native":
            native = NativeGrpcServer(handlers)
            self.port = await native.start(address)
            self._server = native
            return self.port
        server = grpc.aio.server(options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers(handlers)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio's way of saying the bind failed
            raise OSError(f"cannot listen for xDS on {address}: address in use or invalid") from exc
        if port == 0:  # older grpcio reported a failed bind this way
            raise OSError(f"cannot listen for xDS on {address}")
        await server.start()
        self._server, self.port = server, port
        return port

    async def stop(self, grace: float | None = 1.0) -> None:
        """End every stream (clients reconnect, possibly elsewhere), then stop
        the server, waiting at most `grace` seconds for in-flight writes."""
        self.servicer.detach()
        self.servicer.close_all("control plane shutting down")
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
