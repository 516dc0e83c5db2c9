"""One ADS stream as the server holds it, whichever variant it speaks.

State of the World (`server.py`) and Delta (`delta.py`) streams share this
record, the writer loop that drains its outbox, and the push order; they
differ only in how a request is read and what a push computes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import base_pb2

from mesh_control_plane.translate import NodeInfo
from mesh_control_plane.xds.clients import PUSH_ORDER, ClientRecord

__all__ = ["BadNode", "Stream", "StreamObserver", "push_order"]

StreamObserver = Callable[[base_pb2.Node, bool], None]
"""Told (node, True) when a stream identifies its node and (node, False) when that
stream ends: self-registration ties a workload's health to its streams."""


class BadNode(Exception):
    """The first request's node cannot be served (e.g. bad Envoy metadata)."""


@dataclass(eq=False, slots=True)
class Stream:
    """One ADS stream. An outbox list and one future stand in for an
    asyncio.Queue, which costs four deques and an Event per stream."""

    record: ClientRecord
    outbox: list[bytes] = field(default_factory=list)
    waiter: asyncio.Future[None] | None = None
    node: NodeInfo | None = None
    key: Hashable = None  # node.cache_key, computed once
    node_proto: base_pb2.Node | None = None
    close_reason: str | None = None
    close_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    closing: bool = False
    writing: bool = False  # the writer is inside context.write
    forgotten: bool = False
    abandon: asyncio.TimerHandle | None = None
    # the stream's types in push order, kept as types are added: a push walks
    # it for every stream, so it is not recomputed per push
    order: Sequence[str] = ()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def push_order(types: Iterable[str]) -> Sequence[str]:
    """Clusters and endpoints before the listeners and routes that refer to them
    (once per set of types seen: every connecting stream asks per type it adds)."""
    present = frozenset(types)
    found = _ORDERS.get(present)
    if found is None:
        if len(_ORDERS) >= 256:  # type URLs are the clients' to choose: bounded
            _ORDERS.clear()
        found = _ORDERS[present] = _push_order(present)
    return found


_ORDERS: dict[frozenset[str], Sequence[str]] = {}


def _push_order(present: frozenset[str]) -> Sequence[str]:
    ordered = [t for t in PUSH_ORDER if t in present]
    ordered += sorted(t for t in present if t not in PUSH_ORDER)
    found = tuple(ordered)
    return PUSH_ORDER if found == PUSH_ORDER else found  # shared by most streams
