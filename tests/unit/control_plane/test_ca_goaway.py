"""The h2 gRPC client (grpc_wire) through the control plane CA's graceful
shutdown: `CaServer.stop(grace)` (grpcio's server) sends GOAWAY; the call in
flight, below its last-stream-id, must complete, and a new call must go on a
new connection (here to a second CA server on the same port, SO_REUSEPORT,
as a restarted control plane would be). The call is held in flight by the
CA's own hook for non-join bearer tokens (the Kubernetes TokenReview seam),
which waits until the test lets it go."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mesh_control_plane.ca import CaSettings, CertificateAuthority, TokenAuthority
from mesh_control_plane.ca.service import CaServer, CertificateService

from proxyless_mesh import ca_wire
from proxyless_mesh.grpc_wire import H2Channel
from proxyless_mesh.security import Certificate, SpiffeId, make_csr, new_private_key

ALICE = SpiffeId("cluster.local", "shop", "alice")
BOB = SpiffeId("cluster.local", "shop", "bob")


def _listeners_on(port: int) -> int:
    """How many TCP sockets listen on `port` (the kernel's table, no connection)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                count += fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port
    return count


async def _one_listener_left(port: int, timeout: float = 10.0) -> None:
    """The stopping server closes its listening socket on its own thread, maybe
    after its GOAWAY: a connect in between can land in that socket's queue and
    be reset. Wait (polling the table: no event tells it) until only the
    second server listens."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _listeners_on(port) > 1:
        assert loop.time() < deadline, f"the stopping server still listens on {port}"
        await asyncio.sleep(0.01)


def _leaf_identity(response: bytes) -> str | None:
    chain, _ = ca_wire.decode_response(response)
    return Certificate.from_pem(chain[0]).spiffe_id


async def test_a_call_in_flight_completes_through_goaway_and_new_calls_reconnect(
    tmp_path: Path,
) -> None:
    settings = CaSettings(tmp_path / "ca", leaf_ttl=3600)
    authority = CertificateAuthority.open(settings)
    tokens = TokenAuthority.open(settings.ca_dir)
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_review(token: str) -> SpiffeId:
        entered.set()
        await release.wait()
        return ALICE

    first = CaServer(CertificateService(authority, tokens, slow_review))
    port = await first.start("127.0.0.1:0")
    second: CaServer | None = None
    channel = H2Channel(f"127.0.0.1:{port}")
    try:
        held = asyncio.create_task(
            channel.unary(
                ca_wire.CREATE_CERTIFICATE,
                ca_wire.encode_request(make_csr(new_private_key(), ALICE), 0),
                metadata=((ca_wire.AUTHORIZATION, "Bearer a-serviceaccount-token"),),
                timeout=30,
            )
        )
        await asyncio.wait_for(entered.wait(), 10)
        old = await channel.connection()
        second = CaServer(CertificateService(authority, tokens))
        assert await second.start(f"127.0.0.1:{port}") == port
        stopping = asyncio.create_task(first.stop(grace=30))
        await asyncio.wait_for(old.going_away.wait(), 10)
        assert old.goaway is not None and old.goaway.error_code == 0
        assert not held.done()  # still in flight after the GOAWAY
        await _one_listener_left(port)

        fresh = await channel.unary(
            ca_wire.CREATE_CERTIFICATE,
            ca_wire.encode_request(make_csr(new_private_key(), BOB), 0),
            metadata=((ca_wire.AUTHORIZATION, f"Bearer {tokens.mint(BOB, 600)}"),),
            timeout=10,
        )
        assert _leaf_identity(fresh) == BOB.uri
        assert (await channel.connection()) is not old  # a new connection took it

        release.set()
        assert _leaf_identity(await asyncio.wait_for(held, 10)) == ALICE.uri
        await asyncio.wait_for(stopping, 30)
        assert old.closed is not None  # drained, then closed by us or the server
    finally:
        release.set()
        await channel.close()
        await first.stop(None)
        if second is not None:
            await second.stop(None)
