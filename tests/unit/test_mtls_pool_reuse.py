"""Issue 11: the async mesh client stalled for 20-45 s during a root rotation
under mTLS load. The mechanism, checked here without a chaos run:

- a burst (a CPU hiccup while every workload renews at once) pushes the mTLS
  pool past 20 connections; httpcore then closes an idle connection on every
  request (it compares *all* connections with max_keepalive_connections), so
  each following request pays a new handshake, which keeps latency and the
  connection count up: the pool never recovers, and once all 100 connections
  are busy its queue scan (queued x connections per event) saturates the loop.
- a trust-bundle change must not cost more than one SSLContext per
  credentials object, nor drop the pools.

A real TLS server on 127.0.0.1 (asyncio, the workload's server context) holds
each wave's responses until every request of the wave arrived, so a wave of N
really needs N connections at once, and counts the connections it accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx
import pytest
from mesh_control_plane.ca import CertificateAuthority
from mtls_server_support import ca, issue

from proxyless_mesh.integrations._pool import LinearConnectionPool
from proxyless_mesh.integrations._tls_transport import AsyncMtlsTransport, MtlsTransport
from proxyless_mesh.security import Credentials, SpiffeId

__all__ = ["ca"]  # the shared fixtures (mtls_server_support.py)

CLIENT = SpiffeId("cluster.local", "shop", "client").uri
SERVER = SpiffeId("cluster.local", "shop", "server").uri
WAVE = 20  # all of them kept alive (the default max_keepalive_connections)


@dataclass
class Held:
    """An HTTP/1.1 keep-alive server answering a wave of `size` requests only
    once all of them arrived."""

    size: int
    accepted: int = 0
    received: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    handlers: set[asyncio.Task[None]] = field(default_factory=set)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def next_wave(self) -> None:
        self.received = 0
        self.release = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        if task is not None:
            self.handlers.add(task)
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.received += 1
                if self.received >= self.size:
                    self.release.set()
                await self.release.wait()
                closing = b"connection: close" in head.lower()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
                if closing:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the client closed its connection
        finally:
            self.writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        """Close what the client left open and wait for every handler."""
        self.release.set()
        for writer in list(self.writers):
            writer.close()
        await asyncio.gather(*self.handlers)


@contextlib.asynccontextmanager
async def held_server(creds: Credentials) -> AsyncIterator[tuple[Held, str]]:
    held = Held(WAVE)
    server = await asyncio.start_server(
        held.handle, "127.0.0.1", 0, ssl=creds.server_ssl_context(("http/1.1",))
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield held, f"http://127.0.0.1:{port}/"
    finally:
        server.close()
        await held.stop()
        await server.wait_closed()


async def wave(client: httpx.AsyncClient, url: str, held: Held, close: bool = False) -> None:
    held.next_wave()
    headers = {"connection": "close"} if close else {}
    responses = await asyncio.gather(*(client.get(url, headers=headers) for _ in range(WAVE)))
    assert [r.status_code for r in responses] == [200] * WAVE


@dataclass
class Stepped:
    """A keep-alive server that answers its pending requests one at a time,
    oldest first, when the test says so."""

    accepted: int = 0
    pending: list[asyncio.Future[None]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    handlers: set[asyncio.Task[None]] = field(default_factory=set)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        if task is not None:
            self.handlers.add(task)
        self.writers.add(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                answer = asyncio.get_running_loop().create_future()
                self.pending.append(answer)
                self.arrived.set()
                await answer
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the client closed its connection
        finally:
            self.writers.discard(writer)
            writer.close()

    async def until_pending(self, count: int) -> None:
        while len(self.pending) < count:
            self.arrived.clear()
            await self.arrived.wait()

    async def stop(self) -> None:
        for answer in self.pending:
            if not answer.done():
                answer.set_result(None)
        for writer in list(self.writers):
            writer.close()
        await asyncio.gather(*self.handlers)


async def test_steady_load_above_the_keepalive_cap_reuses_connections(
    ca: CertificateAuthority,
) -> None:
    """30 requests always in flight (more than the 20 idle connections kept),
    one finishing and another starting at a time, 150 times: the connection
    that just went idle serves the next request. httpcore's own plan compared
    the *total* (30) with the cap and closed it every time, so every request
    paid a new handshake (150 connections instead of ~30) and, on a loaded
    loop, latency and the connection count never came back down."""
    creds = issue(ca, CLIENT)
    stepped = Stepped()
    server = await asyncio.start_server(
        stepped.handle, "127.0.0.1", 0, ssl=issue(ca, SERVER).server_ssl_context(("http/1.1",))
    )
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    transport = AsyncMtlsTransport(lambda: creds, {SERVER})
    in_flight = 30
    try:
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            requests = {asyncio.create_task(client.get(url)) for _ in range(in_flight)}
            for _ in range(150):
                await stepped.until_pending(in_flight)
                stepped.pending.pop(0).set_result(None)
                done, requests = await asyncio.wait(requests, return_when=asyncio.FIRST_COMPLETED)
                assert [t.result().status_code for t in done] == [200]
                requests.add(asyncio.create_task(client.get(url)))
            await stepped.until_pending(in_flight)
            for answer in stepped.pending:
                answer.set_result(None)
            await asyncio.gather(*requests)
            assert stepped.accepted <= in_flight + 5, "a new connection per request"
    finally:
        server.close()
        await stepped.stop()
        await server.wait_closed()


async def test_a_trust_bundle_change_keeps_pools_and_builds_one_context(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The moment a new root joins the bundle: the open connections stay in
    use, and new connections (a wave with `connection: close`) share one
    SSLContext per credentials object rather than build one per handshake."""
    builds: list[Credentials] = []
    build = Credentials._build_context

    def counting(self: Credentials, kind: str, alpn: tuple[str, ...]) -> ssl.SSLContext:
        builds.append(self)
        return build(self, kind, alpn)

    monkeypatch.setattr(Credentials, "_build_context", counting)
    current = [issue(ca, CLIENT)]
    async with held_server(issue(ca, SERVER)) as (held, url):
        transport = AsyncMtlsTransport(lambda: current[0], {SERVER})
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            await wave(client, url, held)
            ca.rotate_root()  # the new root joins the bundle; the old one still signs
            current[0] = issue(ca, CLIENT)
            assert len(current[0].roots) == 2
            await wave(client, url, held)
            assert held.accepted == WAVE, "the rotation dropped the open connections"
            await wave(client, url, held, close=True)
            await wave(client, url, held, close=True)
            assert held.accepted == 2 * WAVE
    client_builds = [c for c in builds if c.spiffe_id == CLIENT]
    assert len(client_builds) == 2 and client_builds[1] is current[0]


class FakeConnection:
    """A connection to `origin`, idle or busy, that counts how often the pool
    asks about it."""

    calls = 0

    def __init__(self, origin: object, idle: bool) -> None:
        self.origin = origin
        self.idle = idle

    def _answer(self, value: bool) -> bool:
        FakeConnection.calls += 1
        return value

    def is_closed(self) -> bool:
        return self._answer(False)

    def has_expired(self) -> bool:
        return self._answer(False)

    def is_idle(self) -> bool:
        return self._answer(self.idle)

    def is_available(self) -> bool:
        return self._answer(self.idle)

    def can_handle_request(self, origin: object) -> bool:
        return self._answer(origin == self.origin)


@dataclass
class FakeQueued:
    """A request waiting in the pool for a connection."""

    request: httpcore.Request
    connection: object = None

    def is_queued(self) -> bool:
        return self.connection is None

    def assign_to_connection(self, connection: object) -> None:
        self.connection = connection


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("idle", [False, True])
def test_planning_the_pool_is_linear_in_its_connections(asynchronous: bool, idle: bool) -> None:
    """One re-plan of a pool of 100 connections, as at every request start
    and end. Stock httpcore asks ~10^4 questions: idle x connections for 100
    idle ones, queued x connections for 50 requests queued on 100 busy ones;
    that saturated the client's loop (issue 11). Ours asks a few per
    connection and per request, and plans the same: busy, all 50 stay queued."""

    def no_credentials() -> Credentials:
        raise AssertionError("no handshake in this test")

    cls = AsyncMtlsTransport if asynchronous else MtlsTransport
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    transport: Any = cls(no_credentials, {SERVER}, limits=limits)
    pool = transport._transport._pool
    request = httpcore.Request("GET", "https://127.0.0.1:1/")
    pool._connections = [FakeConnection(request.url.origin, idle) for _ in range(100)]
    queued = [] if idle else [FakeQueued(request) for _ in range(50)]
    pool._requests = queued
    FakeConnection.calls = 0
    closing = pool._assign_requests_to_connections()
    assert FakeConnection.calls <= 6 * 100 + 6 * len(queued), FakeConnection.calls
    assert closing == [] and len(pool._connections) == 100
    assert all(r.is_queued() for r in queued)


class StateConnection:
    """A connection in a given state, for comparing plans (no call counting)."""

    def __init__(self, origin: object, state: str) -> None:
        self.origin = origin
        self.state = state

    def is_closed(self) -> bool:
        return self.state == "closed"

    def has_expired(self) -> bool:
        return self.state == "expired"

    def is_idle(self) -> bool:
        return self.state in ("idle", "expired")

    def is_available(self) -> bool:
        return self.state == "idle"

    def can_handle_request(self, origin: object) -> bool:
        return origin == self.origin


@pytest.mark.parametrize("seed", range(100))
def test_the_linear_plan_decides_as_httpcore_does(seed: int) -> None:
    """Random pools (2 origins, closed/expired/idle/busy connections, up to
    the limit, queued requests): the same requests get the same connections,
    the same connections are closed and made. Idle ones are never trimmed
    here (keep-alive cap = max_connections), where httpcore miscounts."""
    origins = [httpcore.Request("GET", f"https://127.0.0.1:{p}/") for p in (1, 2)]
    limit = random.Random(-seed).randint(1, 12)
    states = ["closed", "expired", "idle", "busy"]
    made: list[list[object]] = [[], []]

    def plan(pool_cls: Any, index: int) -> tuple[list[int | None], list[int], int]:
        local = random.Random(seed)
        connections: list[Any] = [
            StateConnection(rng_origin.url.origin, local.choice(states))
            for rng_origin in (local.choice(origins) for _ in range(local.randint(0, limit)))
        ]
        queued = [FakeQueued(local.choice(origins)) for _ in range(local.randint(0, 8))]
        pool = pool_cls(max_connections=limit, max_keepalive_connections=limit)
        pool._connections = list(connections)
        pool._requests = list(queued)

        def create(origin: object) -> StateConnection:
            made[index].append(origin)
            return StateConnection(origin, "connecting")

        pool.create_connection = create
        closing = pool._assign_requests_to_connections()
        everything = connections + [c for c in pool._connections if c not in connections]
        assigned = [
            everything.index(r.connection) if r.connection is not None else None for r in queued
        ]
        return assigned, [connections.index(c) for c in closing], len(pool._connections)

    stock = plan(httpcore.ConnectionPool, 0)
    linear = plan(LinearConnectionPool, 1)
    assert linear == stock
    assert made[0] == made[1]


class _PlaintextMesh:
    """What a MeshTransport reads at construction from a mesh without mTLS."""

    mtls = False


def test_the_plaintext_inner_transport_plans_linearly_with_httpx_settings() -> None:
    from proxyless_mesh.integrations._httpx import AsyncMeshTransport, MeshTransport
    from proxyless_mesh.integrations._pool import LinearAsyncConnectionPool

    stock = httpx.HTTPTransport()._pool
    sync_pool = MeshTransport(_PlaintextMesh())._inner._pool  # type: ignore[arg-type, attr-defined]
    async_pool = AsyncMeshTransport(_PlaintextMesh())._inner._pool  # type: ignore[arg-type, attr-defined]
    assert type(sync_pool) is LinearConnectionPool
    assert type(async_pool) is LinearAsyncConnectionPool
    # Switched in place: every setting httpx chose is kept.
    for name in ("_max_connections", "_max_keepalive_connections", "_keepalive_expiry"):
        assert getattr(sync_pool, name) == getattr(stock, name), name
        assert getattr(async_pool, name) == getattr(stock, name), name
