"""The ADS server: State of the World xDS over one bidirectional gRPC stream.

Per stream, a reader task applies each DiscoveryRequest to the client's
record (ACK, NACK, subscription change) and queues any response; the RPC
handler itself is the one writer. Config changes are pushed through the same
bounded queue, only to streams whose resources actually changed. A stream
that cannot keep up is closed (the client reconnects and gets a fresh State of
the World) instead of stalling the push to everyone else.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from mesh_control_plane.metrics import ControlPlaneMetrics
from mesh_control_plane.translate import NodeInfo
from mesh_control_plane.xds.clients import (
    PUSH_ORDER,
    WILDCARD_TYPES,
    ClientRecord,
    Subscription,
    TypeState,
    short_type_name,
)
from mesh_control_plane.xds.snapshot import PackedResource, SnapshotCache

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 64

StreamObserver = Callable[[base_pb2.Node, bool], None]
"""Told (node, True) when a stream identifies its node and (node, False) when that
stream ends: self-registration ties a workload's health to its streams."""


@dataclass(eq=False, slots=True)
class _Stream:
    record: ClientRecord
    queue: asyncio.Queue[discovery_pb2.DiscoveryResponse | None]
    node: NodeInfo | None = None
    node_proto: base_pb2.Node | None = None
    close_reason: str | None = None
    close_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    closing: bool = False


class _BadNode(Exception):
    """The first request's node cannot be served (e.g. bad Envoy metadata)."""


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


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves the snapshot cache to any number of ADS streams."""

    def __init__(
        self,
        cache: SnapshotCache,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        metrics: ControlPlaneMetrics | None = None,
        observer: StreamObserver | None = None,
    ) -> None:
        self._cache = cache
        self._queue_size = queue_size
        self._observer = observer
        self.metrics = metrics or ControlPlaneMetrics()
        self._streams: set[_Stream] = set()
        self._nonces = itertools.count(1)
        self._remove_listener = cache.add_listener(self._on_config_change)

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
        context: grpc.aio.ServicerContext[
            discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse
        ],
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = _Stream(ClientRecord(peer=context.peer()), asyncio.Queue(self._queue_size))
        self._streams.add(stream)
        reader = asyncio.create_task(self._read(stream, request_iterator))
        try:
            while (response := await stream.queue.get()) is not None:
                yield response
            if stream.close_reason is not None:
                await context.abort(stream.close_code, stream.close_reason)
        finally:
            reader.cancel()
            self._streams.discard(stream)
            self.metrics.stream_closed(stream)
            if stream.node is not None:
                self._cache.release(stream.node)
            if self._observer is not None and stream.node_proto is not None:
                self._observer(stream.node_proto, False)
            log.info("ADS stream from %s (%s) ended", stream.record.node_id, stream.record.peer)

    async def _read(
        self, stream: _Stream, requests: AsyncIterable[discovery_pb2.DiscoveryRequest]
    ) -> None:
        try:
            async for request in requests:
                self._on_request(stream, request)
        except asyncio.CancelledError:
            raise
        except _BadNode as exc:
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

    def _on_request(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> None:
        """Apply one request. A nonce that is not the latest sent for its type
        is stale (the client answered an older response) and ignored whole.
        Otherwise the request ACKs or NACKs (error_detail) the latest response;
        the same response is never re-sent because of a NACK. A response goes
        out when the type is new on the stream, when the subscribed names
        changed (gRPC changes them inside ACKs, even at the same version, and
        possibly inside a NACK), or when the request carries no nonce at all."""
        if stream.node is None:
            self._identify(stream, request.node)
        type_url = request.type_url
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
                state.acked_version = request.version_info
                state.nacked_version = state.nack_message = None
                self.metrics.acked(stream, type_url)
        subscription = _subscription(
            type_url, list(request.resource_names), state.subscription if state else None
        )
        if state is None:
            state = TypeState(subscription)
            stream.record.types[type_url] = state
        elif subscription == state.subscription and nonce:
            return  # an ACK or NACK of what was sent: nothing new to say
        state.subscription = subscription
        self._send(stream, type_url, state, self._selection(stream, type_url, state))

    def _identify(self, stream: _Stream, node_proto: base_pb2.Node) -> None:
        stream.record.node_id = node_proto.id
        try:
            node = NodeInfo.from_proto(node_proto)
        except ValueError as exc:
            raise _BadNode(str(exc)) from exc
        stream.node = node
        stream.record.user_agent = " ".join(
            p for p in (node_proto.user_agent_name, node_proto.user_agent_version) if p
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

    def _selection(
        self, stream: _Stream, type_url: str, state: TypeState
    ) -> Mapping[str, PackedResource]:
        if stream.node is None:
            return {}
        available = self._cache.resources(stream.node, type_url)
        sub = state.subscription
        if sub.wildcard:
            return available
        return {n: available[n] for n in sorted(sub.names) if n in available}

    def _send(
        self,
        stream: _Stream,
        type_url: str,
        state: TypeState,
        selection: Mapping[str, PackedResource],
    ) -> None:
        nonce = str(next(self._nonces))
        version = self._cache.version
        response = discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=nonce
        )
        response.resources.extend(r.any for r in selection.values())
        state.sent_version, state.sent_nonce = version, nonce
        state.sent_hashes = {name: r.hash for name, r in selection.items()}
        state.sent_resources = selection
        self.metrics.pushed(short_type_name(type_url))
        try:
            stream.queue.put_nowait(response)
        except asyncio.QueueFull:
            self._close(stream, f"client too slow: {self._queue_size} responses not yet written")

    def _on_config_change(self, version: str) -> None:
        started = self.metrics.now()
        round_pushes: list[tuple[_Stream, str]] = []
        for stream in list(self._streams):
            if stream.node is None or stream.closing:
                continue
            types = stream.record.types
            ordered = [t for t in PUSH_ORDER if t in types]
            ordered += sorted(t for t in types if t not in PUSH_ORDER)
            for type_url in ordered:
                state = types[type_url]
                selection = self._selection(stream, type_url, state)
                if {n: r.hash for n, r in selection.items()} != state.sent_hashes:
                    self._send(stream, type_url, state, selection)
                    round_pushes.append((stream, type_url))
                if stream.closing:
                    break
        self.metrics.config_pushed(started, (p for p in round_pushes if not p[0].closing))
        log.info(
            "version %s: %d responses pushed to %d streams",
            version,
            len(round_pushes),
            len(self._streams),
        )

    def _close(
        self,
        stream: _Stream,
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
        while not stream.queue.empty():
            stream.queue.get_nowait()
        stream.queue.put_nowait(None)


class XdsServer:
    """A grpc.aio server carrying the ADS service; holds the server reference
    (a collected grpc server stops serving)."""

    def __init__(
        self,
        cache: SnapshotCache,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        metrics: ControlPlaneMetrics | None = None,
        observer: StreamObserver | None = None,
        extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
    ) -> None:
        """`extra_handlers` are served on the same port (the registration service)."""
        self.servicer = AdsServicer(
            cache, queue_size=queue_size, metrics=metrics, observer=observer
        )
        self._extra_handlers = tuple(extra_handlers)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, address: str) -> int:
        """Listen on "HOST:PORT" (port 0 picks one); returns the bound port."""
        server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.servicer, server)
        if self._extra_handlers:
            server.add_generic_rpc_handlers(self._extra_handlers)
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
