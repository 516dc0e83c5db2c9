"""DiscoveryResponses built once and shared by every stream that gets them.

At 10,000 connected clients, most of them of a handful of kinds subscribed to
the same names, building and serializing a response per stream was most of
the cost of a push. A response depends only on (client kind's cache key, type,
subscription) at a version, so it is built and serialized once per such key and
the same bytes are queued on every stream that wants them; gRPC writes bytes
without serializing again.

The nonce is part of those bytes, so streams sharing a response share its
nonce. That is safe: the stale-nonce rule is per stream (each stream compares
a request's nonce with the latest one *it* was sent), and a nonce only has to
tell one stream's responses of one type apart. The one case where a stream
could be sent the very same response twice (its subscription changes and
changes back within a version) gets a private copy with a fresh nonce.

Removals are made before-break (`transition`): a stream whose clusters (or
endpoints) shrink is first sent the new resources plus the removed ones as it
last got them, and the plain new response only after its listeners and routes.
That union depends only on (response last sent, response now due), both shared,
so it is built once per such pair: 10,000 streams making the same move share
one serialization, as they share the plain responses.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2

from mesh_control_plane.translate import NodeInfo
from mesh_control_plane.xds.clients import Subscription
from mesh_control_plane.xds.snapshot import PackedResource

__all__ = ["TRANSITION_SUFFIX", "PreparedResponse", "ResponseCache"]

TRANSITION_SUFFIX = "-transition"
"""Appended to the version of a make-before-break union. It must differ from
both the version before and the version after: a SotW client tells a push (new
version) from the answer to its own request (same version) by it, and our
library infers from that which names the server had read (`_server_view.py`),
so two responses at one version would pass the final one for an answer to a
subscription the server in fact ignored (its nonce was the union's)."""

ResourceSource = Callable[[NodeInfo, str], Mapping[str, PackedResource]]
"""(node, type URL) -> every resource of that type for such a client."""


@dataclass(frozen=True, slots=True, eq=False)
class PreparedResponse:
    """One serialized DiscoveryResponse and what it carries.

    `fingerprint` is the (name, content hash) of every resource in it: two
    responses of a type with equal fingerprints give a client the same state,
    which is how a push is skipped for clients whose resources did not change.
    """

    type_url: str
    version: str
    nonce: str
    subscription: Subscription
    resources: Mapping[str, PackedResource]
    fingerprint: tuple[tuple[str, str], ...]
    payload: bytes


class ResponseCache:
    """Prepared responses of the current version, by (cache key, type, subscription).

    Emptied whenever the version changes (`reset`), so it holds at most one
    entry per distinct kind of subscription in use, however many streams.
    """

    def __init__(self, source: ResourceSource) -> None:
        self._source = source
        self._nonces = itertools.count(1)
        self._version = ""
        self._entries: dict[tuple[Hashable, str, Subscription], PreparedResponse] = {}
        # (nonce last sent, nonce now due) -> the union to send first, or None
        # when nothing is removed; nonces name prepared responses uniquely
        self._transitions: dict[tuple[str, str], PreparedResponse | None] = {}

    def reset(self, version: str) -> None:
        """A new version is current: forget responses built for the last one."""
        self._version = version
        self._entries = {}
        self._transitions = {}

    def transition(self, sent: PreparedResponse, due: PreparedResponse) -> PreparedResponse | None:
        """What a stream whose latest response of this type is `sent` gets
        before `due`, when `due` lacks resources `sent` had: `due`'s resources
        plus those, as `sent` carried them (under its own nonce, at the current
        version + TRANSITION_SUFFIX). None when `due` removes nothing: send `due`
        at once; `sent` itself when the union is just that (`due` only
        removes): send nothing before `due`.

        `sent` may be of any earlier version (a stream that was behind, or
        that several versions reached in one push): the union is always taken
        with what that stream was last told, so nothing it holds disappears
        before the routes that might use it have moved. Memoized per pair
        until the next version."""
        key = (sent.nonce, due.nonce)
        try:
            return self._transitions[key]
        except KeyError:
            pass
        kept = due.resources
        gone = [name for name in sent.resources if name not in kept]
        union: PreparedResponse | None = None
        if gone:
            selection = dict(kept)
            selection.update((name, sent.resources[name]) for name in gone)
            fingerprint = tuple((name, r.hash) for name, r in selection.items())
            if sorted(fingerprint) == sorted(sent.fingerprint):
                union = sent  # nothing added or changed: the client already has it
            else:
                union = self._serialize(
                    due.type_url,
                    due.subscription,
                    selection,
                    fingerprint,
                    f"{due.version}{TRANSITION_SUFFIX}",
                )
        self._transitions[key] = union
        return union

    def get(
        self, node: NodeInfo, key: Hashable, type_url: str, subscription: Subscription
    ) -> PreparedResponse:
        """The response `node` (whose cache key is `key`) subscribed to
        `subscription` gets now."""
        entry_key = (key, type_url, subscription)
        found = self._entries.get(entry_key)
        if found is None:
            found = self._build(node, type_url, subscription)
            self._entries[entry_key] = found
        return found

    def fresh_copy(self, response: PreparedResponse) -> PreparedResponse:
        """The same content under a new nonce (for a stream that already has
        `response` as its latest and must be sent it again)."""
        return self._serialize(
            response.type_url, response.subscription, response.resources, response.fingerprint
        )

    def _build(self, node: NodeInfo, type_url: str, subscription: Subscription) -> PreparedResponse:
        available = self._source(node, type_url)
        if subscription.wildcard:
            selection: Mapping[str, PackedResource] = available
        else:
            selection = {n: available[n] for n in sorted(subscription.names) if n in available}
        fingerprint = tuple((name, r.hash) for name, r in selection.items())
        return self._serialize(type_url, subscription, selection, fingerprint)

    def _serialize(
        self,
        type_url: str,
        subscription: Subscription,
        selection: Mapping[str, PackedResource],
        fingerprint: tuple[tuple[str, str], ...],
        version: str | None = None,
    ) -> PreparedResponse:
        version = self._version if version is None else version
        nonce = str(next(self._nonces))
        message = discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=nonce
        )
        message.resources.extend(r.any for r in selection.values())
        return PreparedResponse(
            type_url=type_url,
            version=version,
            nonce=nonce,
            subscription=subscription,
            resources=selection,
            fingerprint=fingerprint,
            payload=message.SerializeToString(),
        )
