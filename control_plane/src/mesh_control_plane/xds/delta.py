"""Delta (incremental) ADS, served beside State of the World on the same port.

A Delta stream says what it subscribes to and unsubscribes from, per type, and
the server answers with only the resources that are new or changed for it
(each with its own version) and the names that are gone (`removed_resources`).
A client that reconnects sends `initial_resource_versions`, the versions it
already holds, and gets only what differs: a reconnect storm after a control
plane restart re-sends what changed, not everything.

What the server remembers per type and stream (`DeltaTypeState.held`) is what
the client holds. After a response it is the very mapping of resources the
client's kind sees under its subscription at that version (`view`), shared by
every stream in the same place; the diff from one such mapping to the next
(`move`) is computed once per pair and version, and so is the response it
gives: 10,000 streams making the same move share one serialization. Each
resource version is encoded as a `Resource` entry once and responses are
concatenations of such entries behind a small header (protobuf merges
repeated fields of concatenated messages), so no resource is serialized twice.

Per-resource versions are a prefix of the sha256 of the resource's
deterministic serialization: the same content has the same version across
control plane restarts, which is what makes resumption work.

A subscribed name that does not exist is answered in `removed_resources` (the
protocol's way of saying "does not exist"), so a client resolves a non-mesh
host at once. A NACK is recorded (as for SotW, `meshctl status` shows it) and
nothing is re-sent because of it; the client keeps its last good value.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2

from mesh_control_plane.metrics import ControlPlaneMetrics
from mesh_control_plane.translate import NodeInfo
from mesh_control_plane.xds.clients import (
    MAKE_BEFORE_BREAK,
    NOTHING_HELD,
    WILDCARD_TYPES,
    DeltaTypeState,
    Subscription,
    short_type_name,
)
from mesh_control_plane.xds.snapshot import PackedResource
from mesh_control_plane.xds.streams import Stream, push_order

__all__ = ["DeltaResponse", "DeltaResponses", "DeltaStreams", "resource_version"]

log = logging.getLogger(__name__)

ResourceSource = Callable[[NodeInfo, str], Mapping[str, PackedResource]]
View = Mapping[str, PackedResource]

VERSION_LENGTH = 16
"""Hex digits of the sha256 used as a resource's version (64 bits)."""


def resource_version(resource: PackedResource) -> str:
    return resource.hash[:VERSION_LENGTH]


@dataclass(frozen=True, slots=True, eq=False)
class DeltaResponse:
    """One serialized DeltaDiscoveryResponse, shared by the streams that get it."""

    type_url: str
    version: str
    nonce: str
    resources: int
    removed: int
    payload: bytes


@dataclass(slots=True, eq=False)
class _Move:
    """From one held mapping to a view: what to send and what to remove."""

    updated: tuple[PackedResource, ...]
    removed: tuple[str, ...]
    responses: tuple[DeltaResponse, ...] | None = None  # filled on first use
    answer: DeltaResponse | None = None  # the answer to a subscription, filled on first use


class DeltaResponses:
    """Views, moves and responses of the current version (emptied by `reset`);
    encoded resource entries survive one version (most resources do not change)."""

    def __init__(self, source: ResourceSource) -> None:
        self._source = source
        self._nonces = itertools.count(1)
        self._version = ""
        self._views: dict[tuple[Hashable, str, Subscription], View] = {}
        self._moves: dict[tuple[int, int], tuple[View, View, _Move]] = {}
        self._responses: dict[Hashable, DeltaResponse] = {}
        self._entries: dict[tuple[str, str, str], bytes] = {}
        self._older_entries: dict[tuple[str, str, str], bytes] = {}
        self._subscriptions: dict[Subscription, Subscription] = {}

    def reset(self, version: str) -> None:
        self._version = version
        self._views, self._moves, self._responses = {}, {}, {}
        self._older_entries, self._entries = self._entries, {}
        # streams keep the objects they hold; forgetting the rest bounds this
        # by the subscriptions in use, not every one ever seen
        self._subscriptions = {}

    def subscription(self, wildcard: bool, names: frozenset[str]) -> Subscription:
        """One shared object per distinct subscription (streams hold thousands)."""
        made = Subscription(wildcard, names)
        return self._subscriptions.setdefault(made, made)

    def view(self, node: NodeInfo, key: Hashable, type_url: str, sub: Subscription) -> View:
        """What a client of `node`'s kind subscribed to `sub` should hold now."""
        entry_key = (key, type_url, sub)
        found = self._views.get(entry_key)
        if found is None:
            available = self._source(node, type_url)
            if sub.wildcard:
                found = available
            else:
                found = {n: available[n] for n in sorted(sub.names) if n in available}
            self._views[entry_key] = found
        return found

    def move(self, held: View, view: View) -> _Move:
        """The diff from `held` to `view`, once per pair of mappings."""
        key = (id(held), id(view))
        found = self._moves.get(key)
        if found is not None and found[0] is held and found[1] is view:
            return found[2]
        updated = tuple(
            r for name, r in view.items() if (old := held.get(name)) is None or old.hash != r.hash
        )
        made = _Move(updated, tuple(name for name in held if name not in view))
        self._moves[key] = (held, view, made)  # the references keep the ids unique
        return made

    def resumed(self, initial: Mapping[str, str], view: View) -> _Move:
        """The diff from what a reconnecting client says it holds."""
        updated = tuple(r for name, r in view.items() if initial.get(name) != resource_version(r))
        return _Move(updated, tuple(name for name in initial if name not in view))

    def pushed(self, type_url: str, move: _Move) -> tuple[DeltaResponse, ...]:
        """The responses a push of `move` takes: one, or for clusters and
        endpoints whose move both adds and removes, two (make-before-break:
        the removal goes last, after the routes)."""
        if move.responses is None:
            if move.removed and move.updated and type_url in MAKE_BEFORE_BREAK:
                move.responses = (
                    self.response(type_url, move.updated, ()),
                    self.response(type_url, (), move.removed),
                )
            else:
                move.responses = (self.response(type_url, move.updated, move.removed),)
        return move.responses

    def answer(self, type_url: str, move: _Move, absent: Sequence[str]) -> DeltaResponse:
        """The answer to a subscription: `move` whole, plus the names that do not
        exist as removed. At a connect storm thousands of clients get the same
        answer, made once (a response's key spells every resource's name)."""
        if absent:
            return self.response(type_url, move.updated, (*move.removed, *absent))
        if move.answer is None:
            move.answer = self.response(type_url, move.updated, move.removed)
        return move.answer

    def response(
        self, type_url: str, updated: Sequence[PackedResource], removed: Sequence[str]
    ) -> DeltaResponse:
        key = (type_url, tuple((r.name, r.hash) for r in updated), tuple(removed))
        found = self._responses.get(key)
        if found is None:
            nonce = f"d{next(self._nonces)}"
            header = discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=self._version,
                type_url=type_url,
                nonce=nonce,
                removed_resources=removed,
            ).SerializeToString()
            payload = b"".join((header, *(self._entry(r) for r in updated)))
            found = DeltaResponse(
                type_url, self._version, nonce, len(updated), len(removed), payload
            )
            self._responses[key] = found
        return found

    def _entry(self, resource: PackedResource) -> bytes:
        """`resources` field bytes for one resource version, encoded once."""
        key = (resource.type_url, resource.name, resource.hash)
        found = self._entries.get(key) or self._older_entries.get(key)
        if found is None:
            entry = discovery_pb2.Resource(
                name=resource.name, version=resource_version(resource), resource=resource.any
            )
            found = discovery_pb2.DeltaDiscoveryResponse(resources=[entry]).SerializeToString()
        self._entries[key] = found
        return found


Enqueue = Callable[[Stream, bytes, str], None]
"""(stream, payload, type name) -> queue it (or close a stream too slow)."""


class DeltaStreams:
    """Applies Delta requests to streams and computes their pushes."""

    def __init__(
        self, responses: DeltaResponses, metrics: ControlPlaneMetrics, enqueue: Enqueue
    ) -> None:
        self._responses = responses
        self._metrics = metrics
        self._enqueue = enqueue

    def on_request(self, stream: Stream, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        """Apply one request: the ACK or NACK of the latest response of its
        type (an older nonce changes no status), then any subscription change,
        answered with what it adds and, for names that do not exist, removes.
        The first request of a type is answered even when empty (the client
        learns the server has read it), unless it resumes with versions that
        are all current: then there is nothing to say, and at 10,000 clients
        resuming after a restart those empty answers were most of the bytes."""
        node = stream.node
        if node is None:
            return
        stream.record.last_seen = time.time()  # the console's "last seen"
        type_url = sys.intern(request.type_url)
        types = stream.record.delta_types
        state = types.get(type_url)
        nonce = request.response_nonce
        if state is not None and nonce and nonce == state.sent_nonce:
            self._acknowledge(stream, type_url, state, request)
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = set(request.resource_names_unsubscribe)
        responses = self._responses
        if state is None:
            wildcard = "*" in subscribe or (not subscribe and type_url in WILDCARD_TYPES)
            sub = responses.subscription(wildcard, frozenset(subscribe - unsubscribe - {"*"}))
            state = types[type_url] = DeltaTypeState(sub)
            stream.order = push_order(types)
            view = responses.view(node, stream.key, type_url, sub)
            initial = request.initial_resource_versions
            if initial:  # a reconnect: what the client says it holds
                move = responses.resumed(initial, view)
            else:
                move = responses.move(NOTHING_HELD, view)
            absent = sorted(n for n in sub.names.difference(view) if n not in initial)
        else:
            if not subscribe and not unsubscribe:
                return  # an ACK or NACK only
            old = state.subscription
            wildcard = (old.wildcard or "*" in subscribe) and "*" not in unsubscribe
            names = (old.names | subscribe) - unsubscribe - {"*"}
            sub = responses.subscription(wildcard, frozenset(names))
            view = responses.view(node, stream.key, type_url, sub)
            held = state.held
            if unsubscribe:  # the client forgets these itself: not "removed"
                held = {n: r for n, r in held.items() if n in view or n not in unsubscribe}
            move = responses.move(held, view)
            absent = sorted(n for n in (subscribe - old.names).difference(view) if n not in held)
        state.subscription = sub
        state.held = view
        resumed_unchanged = state.sent_nonce == "" and request.initial_resource_versions
        if move.updated or move.removed or absent or not (state.sent_nonce or resumed_unchanged):
            # an answer: nothing routes through what it adds yet, no split
            self._send(stream, state, responses.answer(type_url, move, absent))

    def push(self, stream: Stream, pushed: list[tuple[Stream, str]]) -> None:
        """Bring `stream` to the current version: per type (clusters first)
        what changed for it; removals of clusters and endpoints last."""
        node = stream.node
        if node is None:
            return
        responses = self._responses
        types = stream.record.delta_types
        finals: list[tuple[DeltaTypeState, DeltaResponse]] = []
        for type_url in stream.order:
            state = types[type_url]
            view = responses.view(node, stream.key, type_url, state.subscription)
            if view is state.held:
                continue
            move = responses.move(state.held, view)
            state.held = view
            if not move.updated and not move.removed:
                continue
            pushed.append((stream, type_url))
            made = responses.pushed(type_url, move)
            if len(made) == 1 and (move.updated or type_url not in MAKE_BEFORE_BREAK):
                self._send(stream, state, made[0])
            else:  # removals wait for the routes and listeners to move
                if len(made) == 2:
                    self._send(stream, state, made[0])
                finals.append((state, made[-1]))
            if stream.closing:
                return
        for state, response in finals:
            if stream.closing:
                return
            self._send(stream, state, response)

    def _send(self, stream: Stream, state: DeltaTypeState, response: DeltaResponse) -> None:
        state.sent_nonce = response.nonce
        state.sent_version = response.version
        self._enqueue(stream, response.payload, short_type_name(response.type_url))

    def _acknowledge(
        self,
        stream: Stream,
        type_url: str,
        state: DeltaTypeState,
        request: discovery_pb2.DeltaDiscoveryRequest,
    ) -> None:
        if request.HasField("error_detail"):
            state.nacked_version = state.sent_version
            state.nack_message = request.error_detail.message
            self._metrics.nacked(stream, type_url, short_type_name(type_url))
            log.warning(
                "NACK (delta) from %s for %s version %s: %s",
                stream.record.node_id,
                short_type_name(type_url),
                state.sent_version,
                request.error_detail.message,
            )
        else:
            state.acked_version = state.sent_version
            state.nacked_version = state.nack_message = None
            self._metrics.acked(stream, type_url)
