"""httpcore connection pools that count idle connections right and plan in
linear time.

httpcore (1.0.9) re-plans its pool at every request start and end
(`_assign_requests_to_connections`, private: httpcore has no public hook)
and, to apply max_keepalive_connections, compares the *total* connection
count with the cap: with more requests in flight than the cap, the
connection that just went idle is closed and the next request opens (and
handshakes) a new one. It also rebuilds that count per idle connection and
scans every connection per queued request. These pools make the same plan
(reuse an available connection, open one under max_connections, replace an
idle one) in O(connections + queued), counting idle connections for the cap.
Used only where httpcore's pools have that method (`supported()`); the
README lists this and the other httpx internals the transports rely on.
"""

from __future__ import annotations

from typing import Any

import httpcore

__all__ = ["LinearAsyncConnectionPool", "LinearConnectionPool", "linear", "supported"]


def supported() -> bool:
    """Whether this httpcore plans its pool the way `_plan` replaces."""
    return all(
        callable(getattr(pool, "_assign_requests_to_connections", None))
        and callable(getattr(pool, "create_connection", None))
        for pool in (httpcore.ConnectionPool, httpcore.AsyncConnectionPool)
    )


def _plan(pool: Any) -> list[Any]:
    """httpcore's plan, linear: drop closed connections, close expired ones
    and idle ones beyond max_keepalive_connections (counting idle ones), then
    give each queued request an available connection for its origin, else a
    new one while under max_connections, else replace an idle one. Returns
    the connections to close (the pool closes them outside its lock)."""
    closing: list[Any] = []
    live: list[Any] = []
    for connection in pool._connections:
        if connection.is_closed():
            continue
        if connection.has_expired():
            closing.append(connection)
            continue
        live.append(connection)
    surplus = sum(1 for c in live if c.is_idle()) - pool._max_keepalive_connections
    if surplus > 0:
        kept = []
        for connection in live:
            if surplus > 0 and connection.is_idle():
                closing.append(connection)
                surplus -= 1
            else:
                kept.append(connection)
        live = kept
    pool._connections = live

    queued = [request for request in pool._requests if request.is_queued()]
    if not queued:
        return closing
    # (origin, its available connections), listed once per origin queued
    # for; a list, not a dict: httpcore's Origin is not hashable. A pool
    # serves one cluster's endpoints, so it is short.
    available: list[tuple[Any, list[Any]]] = []
    idle = [c for c in live if c.is_idle()]
    for pool_request in queued:
        origin = pool_request.request.url.origin
        ready = next((r for o, r in available if o == origin), None)
        if ready is None:
            ready = [c for c in live if c.can_handle_request(origin) and c.is_available()]
            available.append((origin, ready))
        if ready:
            pool_request.assign_to_connection(ready[0])
            continue
        if len(live) >= pool._max_connections:
            if not idle:
                continue  # stays queued until a connection frees up
            replaced = idle.pop(0)
            live.remove(replaced)
            closing.append(replaced)
            for _, others in available:
                if replaced in others:
                    others.remove(replaced)
        connection = pool.create_connection(origin)
        live.append(connection)
        pool_request.assign_to_connection(connection)
        if connection.is_available():  # an HTTP/2 candidate takes more requests
            ready.append(connection)
    return closing


class LinearConnectionPool(httpcore.ConnectionPool):
    """httpcore.ConnectionPool with the linear plan (see the module doc)."""

    def _assign_requests_to_connections(self) -> list[Any]:
        return _plan(self)


class LinearAsyncConnectionPool(httpcore.AsyncConnectionPool):
    """httpcore.AsyncConnectionPool with the linear plan (see the module doc)."""

    def _assign_requests_to_connections(self) -> list[Any]:
        return _plan(self)


def linear(transport: Any) -> Any:
    """httpx's own transport with its pool switched, in place, to the linear
    plan: the subclasses add no state, so changing the pool's class keeps every
    setting httpx gave it. Any other pool (or an httpcore without the planning
    method) is left as it is. Returns `transport`."""
    pool = getattr(transport, "_pool", None)
    if supported():
        if type(pool) is httpcore.ConnectionPool:
            pool.__class__ = LinearConnectionPool
        elif type(pool) is httpcore.AsyncConnectionPool:
            pool.__class__ = LinearAsyncConnectionPool
    return transport
