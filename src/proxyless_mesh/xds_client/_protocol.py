"""The ADS State-of-the-World protocol as a sans-I/O state machine.

It owns subscriptions, versions, nonces and the last good resources, and turns
events (a watch changed, a stream started, a response arrived) into the
DiscoveryRequests to send. No I/O here, so every protocol rule is a plain
method call in the tests; `_client` is only the asyncio/gRPC shell around it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from proxyless_mesh.errors import XdsResourceError
from proxyless_mesh.model import InboundListener, Listener
from proxyless_mesh.xds_client import _codec
from proxyless_mesh.xds_client._decode import decode_resource, resource_name, unpack_resource
from proxyless_mesh.xds_client._server_view import ServerView
from proxyless_mesh.xds_client._state import (
    ClientStatus,
    ResourceStatus,
    XdsState,
    cluster_names,
)
from proxyless_mesh.xds_client._types import ResourceType

log = logging.getLogger("proxyless_mesh.xds_client")

_LDS = ResourceType.LISTENER
_RDS = ResourceType.ROUTE_CONFIGURATION
_CDS = ResourceType.CLUSTER
_EDS = ResourceType.CLUSTER_LOAD_ASSIGNMENT

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

DOES_NOT_EXIST_TIMEOUT = 15.0
"""Seconds a subscribed LDS/CDS name may stay unanswered on a connected stream
before it is taken as absent: gRPC's does-not-exist timer (gRFC A27). Only the
fallback: a response known to reflect the subscription decides at once."""


@dataclass
class _TypeState:
    """Everything kept per resource type."""

    names: frozenset[str] = frozenset()  # what we want now
    sent_names: frozenset[str] | None = None  # last sent on this stream; None: nothing yet
    version: str = ""  # last ACKed version; kept across streams
    nonce: str = ""  # last response nonce; per stream
    resources: dict[str, Any] = field(default_factory=dict)  # last good model objects
    versions: dict[str, str] = field(default_factory=dict)  # version each was accepted at
    errors: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (version, why)
    absent: set[str] = field(default_factory=set)  # full-state types: known not to exist
    raw: dict[str, Any] = field(default_factory=dict)  # name -> packed Any of the last good (CSDS)
    view: ServerView = field(default_factory=ServerView)  # per stream: what the server has seen
    asked_at: dict[str, float] = field(default_factory=dict)  # unresolved name -> first sent

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            self.asked_at.pop(name, None)
            self.resources.pop(name, None)
            self.raw.pop(name, None)
            self.versions.pop(name, None)
            self.errors.pop(name, None)
            self.absent.discard(name)


@dataclass(frozen=True)
class Recorded:
    """What the disk cache records of a response: its type and resources (Anys)."""

    type_url: str
    resources: list[Any]


@dataclass(frozen=True)
class ResponseOutcome:
    """What handling one DiscoveryResponse produced."""

    requests: list[Any]  # DiscoveryRequests to send, in order
    rejected: dict[str, str]  # resource name (or "resource index N") -> reason
    changed: bool  # whether the published state changed


class AdsProtocol:
    """One client's ADS bookkeeping, surviving across streams."""

    def __init__(
        self,
        node: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
        does_not_exist_timeout: float = DOES_NOT_EXIST_TIMEOUT,
    ) -> None:
        self._node = node  # the field mapping `_wire.encode` takes (_node.node_fields)
        self._clock = clock
        self._dne_timeout = does_not_exist_timeout
        self._types = {t: _TypeState() for t in ResourceType}
        self._watched: frozenset[str] = frozenset()
        self._inbound: frozenset[str] = frozenset()  # of _watched: server listeners
        self._stream_active = False
        self._node_sent = False
        self._state: XdsState | None = None

    # -- subscriptions ---------------------------------------------------------

    def watch(self, listener_names: Iterable[str], *, inbound: bool = False) -> list[Any]:
        """Add listeners to the subscription; returns the requests to send.
        `inbound`: these are server listeners (gRFC A36), which must decode to
        an InboundListener (a client listener under such a name is NACKed,
        and the other way round)."""
        names = frozenset(listener_names)
        self._watched = self._watched | names
        self._inbound = (self._inbound | names) if inbound else (self._inbound - names)
        return self._resubscribe()

    def unwatch(self, listener_names: Iterable[str]) -> tuple[list[Any], bool]:
        """Drop listeners (and whatever only they referenced): requests to send,
        and whether the published state changed."""
        self._watched = self._watched - frozenset(listener_names)
        self._inbound = self._inbound & self._watched
        before = self._resource_count()
        requests = self._resubscribe()
        return requests, self._resource_count() != before

    @property
    def watched(self) -> frozenset[str]:
        return self._watched

    # -- stream lifecycle ------------------------------------------------------

    def start_stream(self) -> list[Any]:
        """A new stream: nonces are per stream and reset; versions are kept so the
        server can skip what we already have. Every non-empty subscription is sent
        (an empty first request would mean "wildcard" for LDS/CDS)."""
        self._stream_active = True
        self._node_sent = False
        for ts in self._types.values():
            ts.nonce = ""
            ts.sent_names = None
            ts.view.reset()
            ts.asked_at.clear()  # timers run only while a stream is up (as gRPC's)
        return self._pending_requests()

    def end_stream(self) -> None:
        """The stream is gone; resources are kept (traffic goes on with the last
        good config) until a new stream brings updates."""
        self._stream_active = False
        for ts in self._types.values():
            ts.asked_at.clear()

    # -- the wire (what the Delta variant, _delta.py, changes) ------------------

    #: The ADS method this variant calls, and the messages it sends and reads.
    METHOD = f"/{ADS_SERVICE}/StreamAggregatedResources"
    REQUEST = "envoy.service.discovery.v3.DiscoveryRequest"
    RESPONSE = "envoy.service.discovery.v3.DiscoveryResponse"

    def is_response(self, message: Any) -> bool:
        """False for the end of the stream (None)."""
        return message is not None

    def response_version(self, response: Any) -> str:
        return str(response.version_info)

    def recordable(self, response: Any) -> Any:
        """The response as the disk cache records it."""
        return response

    # -- responses -------------------------------------------------------------

    def handle_response(self, response: Any) -> ResponseOutcome:
        """Apply one DiscoveryResponse: valid resources replace their last good
        value, invalid ones are NACKed and keep theirs (as gRPC does)."""
        rtype = ResourceType.from_type_url(response.type_url)
        if rtype is None or self._types[rtype].sent_names is None:
            why = f"type URL {response.type_url!r} was not requested"
            request = self._make_request(response.type_url, [], "", response.nonce, why)
            return ResponseOutcome([request], {"<response>": why}, changed=False)
        ts = self._types[rtype]
        ts.nonce = response.nonce
        raws: dict[str, Any] = {}
        decoded, rejected, seen, complete = self._decode_all(rtype, ts, response.resources, raws)
        subscribed = ts.view.received(response.version_info, seen if complete else None)
        changed = self._apply(ts, seen, decoded, rejected, raws, response.version_info)
        # A name missing from a full-state (LDS/CDS) response does not exist. If
        # some resource could not even be named, it may be the missing one, so
        # nothing is declared absent from that response.
        #
        # A name we hold was in the server's subscription when it was sent, and
        # stays there (every later request carries it), so its absence is a
        # deletion. A name never received is absent only if the server had read
        # our subscription to it when it built this response (`subscribed`, see
        # _server_view): a response built before omits it too. Otherwise the
        # does-not-exist timer decides, as in gRPC. This keeps a non-mesh host
        # resolved in one round trip without a brand-new one passing for it.
        if rtype.is_full_state and complete:
            for name in ts.names - seen:
                if name not in ts.resources and name not in subscribed:
                    continue
                changed |= self._declare_absent(ts, name)
        if rejected:
            detail = "\n".join(f"{name}: {reason}" for name, reason in rejected.items())
        else:
            ts.version = response.version_info
            detail = None
        requests = [self._request_for(rtype, detail)]
        if changed:
            self._state = None
            requests += self._resubscribe()
        return ResponseOutcome(requests, rejected, changed)

    def _apply(
        self,
        ts: _TypeState,
        seen: Iterable[str],
        decoded: dict[str, Any],
        rejected: dict[str, str],
        raws: dict[str, Any],
        version: str,
    ) -> bool:
        """Valid resources replace their last good value, rejected ones keep
        theirs and record why; returns whether the published state changed."""
        changed = False
        for name in seen:
            ts.asked_at.pop(name, None)  # answered (valid or not): no timer
        for name, value in decoded.items():
            changed |= ts.resources.get(name) != value or name in ts.absent
            ts.resources[name] = value
            ts.raw[name] = raws[name]
            ts.versions[name] = version
            ts.errors.pop(name, None)
            ts.absent.discard(name)
        for name, reason in rejected.items():
            if name in ts.names:
                ts.errors[name] = (version, reason)
        return changed

    def _declare_absent(self, ts: _TypeState, name: str) -> bool:
        """Mark `name` as known not to exist; returns whether that is news."""
        news = name not in ts.absent or name in ts.resources
        ts.forget([name])
        ts.absent.add(name)
        return news

    # -- the does-not-exist timer ----------------------------------------------

    def next_expiry(self) -> float | None:
        """When (on the `clock`) the earliest does-not-exist timer fires; None
        when none runs. The shell schedules a call to `expire` then."""
        starts = [t for ts in self._types.values() for t in ts.asked_at.values()]
        return min(starts) + self._dne_timeout if starts else None

    def expire(self) -> tuple[list[Any], bool]:
        """Declare absent every LDS/CDS name unanswered for the timeout on this
        stream: requests to send, and whether the published state changed."""
        now = self._clock()
        changed = False
        for rtype in (_LDS, _CDS):
            ts = self._types[rtype]
            for name, asked in list(ts.asked_at.items()):
                if now - asked >= self._dne_timeout:
                    log.info(
                        "%s %r not received in %gs: absent", rtype.short_name, name, now - asked
                    )
                    changed |= self._declare_absent(ts, name)
        if not changed:
            return [], False
        self._state = None
        return self._resubscribe(), True

    def _decode_all(
        self, rtype: ResourceType, ts: _TypeState, resources: Iterable[Any], raws: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, str], set[str], bool]:
        """Decode each subscribed resource on its own: (decoded, rejected, names
        seen, whether every resource could be named). `raws` receives the packed
        form of each decoded resource (unwrapped from a `Resource`), for CSDS."""
        decoded: dict[str, Any] = {}
        rejected: dict[str, str] = {}
        seen: set[str] = set()
        complete = True
        for i, res in enumerate(resources):
            try:
                msg = unpack_resource(rtype, res)
            except XdsResourceError as exc:
                rejected[f"resource index {i}"] = str(exc)
                complete = False
                continue
            name = resource_name(rtype, msg)
            if name not in ts.names:
                continue  # not subscribed (SotW servers may send more): ignored, like gRPC
            if name in seen:
                decoded.pop(name, None)
                rejected[name] = "duplicate resource name in one response"
                continue
            seen.add(name)
            try:
                decoded[name] = self._check_side(rtype, name, decode_resource(rtype, msg))
            except XdsResourceError as exc:
                rejected[name] = str(exc)
                continue
            raws[name] = (
                res
                if res.type_url == rtype.type_url
                else _codec.any_message(rtype.type_url, msg.SerializeToString())
            )
        return decoded, rejected, seen, complete

    def _check_side(self, rtype: ResourceType, name: str, value: Any) -> Any:
        """A listener must be of the side it was watched for."""
        if rtype is _LDS:
            inbound = name in self._inbound
            if inbound and not isinstance(value, InboundListener):
                raise XdsResourceError("expected a server listener (no api_listener, gRFC A36)")
            if not inbound and isinstance(value, InboundListener):
                raise XdsResourceError(
                    "Listener has no api_listener (a server listener, watched as a client one)"
                )
        return value

    # -- published views -------------------------------------------------------

    @property
    def state(self) -> XdsState:
        if self._state is None:
            t = self._types
            lds = t[_LDS].resources
            self._state = XdsState(
                listeners=MappingProxyType(
                    {n: v for n, v in lds.items() if isinstance(v, Listener)}
                ),
                inbound=MappingProxyType(
                    {n: v for n, v in lds.items() if isinstance(v, InboundListener)}
                ),
                absent_listeners=frozenset(t[_LDS].absent),
                route_configs=MappingProxyType(dict(t[_RDS].resources)),
                clusters=MappingProxyType(dict(t[_CDS].resources)),
                assignments=MappingProxyType(dict(t[_EDS].resources)),
                absent_clusters=frozenset(t[_CDS].absent),
            )
        return self._state

    def resource_status(self) -> list[ResourceStatus]:
        out = []
        for rtype, ts in self._types.items():
            for name in sorted(ts.names):
                error = ts.errors.get(name)
                if error is not None:
                    status = ClientStatus.NACKED
                elif name in ts.resources:
                    status = ClientStatus.ACKED
                elif name in ts.absent:
                    status = ClientStatus.DOES_NOT_EXIST
                else:
                    status = ClientStatus.REQUESTED
                out.append(
                    ResourceStatus(
                        type_url=rtype.type_url,
                        name=name,
                        status=status,
                        version=ts.versions.get(name, ""),
                        error=error[1] if error else None,
                        error_version=error[0] if error else None,
                        xds_config=ts.raw.get(name),
                    )
                )
        return out

    # -- internals -------------------------------------------------------------

    def _resubscribe(self) -> list[Any]:
        """Recompute what each type must subscribe to from what is cached, in
        dependency order, forget what is no longer referenced, and return the
        requests for every type whose names changed."""
        t = self._types
        listeners = [
            lis for n in self._watched if isinstance(lis := t[_LDS].resources.get(n), Listener)
        ]
        self._set_names(_LDS, self._watched)
        self._set_names(_RDS, {lis.rds_name for lis in listeners if lis.rds_name})
        routes = [lis.inline_routes for lis in listeners if lis.inline_routes is not None]
        routes += [t[_RDS].resources[n] for n in t[_RDS].names if n in t[_RDS].resources]
        self._set_names(_CDS, {c for rc in routes for c in cluster_names(rc)})
        clusters = [t[_CDS].resources[n] for n in t[_CDS].names if n in t[_CDS].resources]
        self._set_names(_EDS, {c.eds_service_name for c in clusters})
        return self._pending_requests()

    def _set_names(self, rtype: ResourceType, names: Iterable[str]) -> None:
        ts = self._types[rtype]
        new = frozenset(names)
        dropped = ts.names - new
        if dropped:
            ts.forget(dropped)
            self._state = None
        ts.names = new

    def _resource_count(self) -> int:
        return sum(len(ts.resources) + len(ts.absent) for ts in self._types.values())

    def _pending_requests(self) -> list[Any]:
        if not self._stream_active:
            return []
        out = []
        for rtype, ts in self._types.items():
            if ts.names == ts.sent_names or (ts.sent_names is None and not ts.names):
                continue
            if ts.view.awaiting_first_response and ts.sent_names:
                continue  # one nonce-less request per type: the ACK carries these names
            out.append(self._request_for(rtype, None))
        return out

    def identify(self) -> list[Any]:
        """On a connected stream that has sent nothing (nothing subscribed yet:
        a mesh that only serves, or has not made a request), the request that
        says who we are; else none. Without it the control plane holds a stream
        with no node. RDS with no names subscribes to nothing (LDS/CDS would
        mean "everything"); a server that leaves it unanswered delays nothing
        (a later RDS subscription does not wait for its answer)."""
        if not self._stream_active or self._node_sent:
            return []
        return [self._request_for(_RDS, None)]

    def _request_for(self, rtype: ResourceType, error: str | None) -> Any:
        ts = self._types[rtype]
        ts.sent_names = ts.names
        ts.view.sent(ts.names)
        if rtype.is_full_state:
            now = self._clock()
            for name in ts.names:
                if name not in ts.resources and name not in ts.absent and name not in ts.errors:
                    ts.asked_at.setdefault(name, now)  # unanswered so far: timer runs
        return self._make_request(rtype.type_url, sorted(ts.names), ts.version, ts.nonce, error)

    def _make_request(
        self, type_url: str, names: list[str], version: str, nonce: str, error: str | None
    ) -> Any:
        fields: dict[str, Any] = {
            "type_url": type_url,
            "resource_names": names,
            "version_info": version,
            "response_nonce": nonce,
        }
        return self._request(fields, error)

    def _request(self, fields: dict[str, Any], error: str | None) -> Any:
        """The request of this variant's type: `fields`, the NACK's status, and
        the node on the first request of a stream."""
        if error is not None:
            fields["error_detail"] = {"code": INVALID_ARGUMENT, "message": error}
        if not self._node_sent:
            fields["node"] = self._node
            self._node_sent = True
        return _codec.request(self.REQUEST, fields)


INVALID_ARGUMENT = 3  # google.rpc.Code
