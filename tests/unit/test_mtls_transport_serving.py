"""The mTLS client transports against the mTLS uvicorn protocol, with
certificates from an in-process CA, over real sockets on 127.0.0.1: who sees
whom, what each refusal looks like, PERMISSIVE/STRICT, rotation. The sync
transport's tests run on both of its TLS stacks (`tls_stack`): rustls, the
default, and Python's ssl (PROXYLESS_MESH_TLS=openssl)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import httpx
import pytest
from mesh_control_plane.ca import CaSettings, CertificateAuthority
from mtls_server_support import ALICE, BOB, CAROL, Served, ca, issue, serve, tls_stack

from proxyless_mesh.errors import PeerIdentityError
from proxyless_mesh.integrations._grpc_serving import grpc_server_credentials
from proxyless_mesh.integrations._serving import MeshUvicornConfig
from proxyless_mesh.integrations._tls_transport import (
    AsyncMtlsTransport,
    AsyncTlsTransports,
    MtlsTransport,
    TlsTransports,
)
from proxyless_mesh.model import TlsMode, UpstreamTls
from proxyless_mesh.security import (
    Certificate,
    Credentials,
)
from proxyless_mesh.security._inbound import InboundTls

__all__ = ["ca", "tls_stack"]  # the shared fixtures (mtls_server_support.py)


@pytest.fixture(params=["auto", "asyncio"])
def server(ca: CertificateAuthority, request: pytest.FixtureRequest) -> Iterator[Served]:
    """The mTLS server (mtls_server_support.py) on the default loop (uvloop
    when importable) and on asyncio's, the fallback."""
    with serve(ca, request.param) as served:
        yield served


@pytest.mark.usefixtures("tls_stack")
def test_mutual_tls_both_sides_verified(ca: CertificateAuthority, server: Served) -> None:
    alice = issue(ca, ALICE)
    with httpx.Client(transport=MtlsTransport(lambda: alice, {BOB})) as client:
        response = client.get(server.url)
        assert response.text == ALICE
        assert response.request.url == httpx.URL(server.url)  # put back after the call
    tls = server.scopes[0]["extensions"]["tls"]
    assert server.scopes[0]["scheme"] == "https"
    assert tls["tls_version"] == 0x0304 and isinstance(tls["cipher_suite"], int)
    assert Certificate.from_pem(tls["client_cert_chain"][0]) == alice.leaf
    assert tls["client_cert_error"] is None


async def test_async_transport(ca: CertificateAuthority, server: Served) -> None:
    alice = issue(ca, ALICE)
    async with httpx.AsyncClient(transport=AsyncMtlsTransport(lambda: alice, {BOB})) as client:
        assert (await client.get(server.url)).text == ALICE
    async with httpx.AsyncClient(transport=AsyncMtlsTransport(lambda: alice, {CAROL})) as client:
        with pytest.raises(PeerIdentityError) as info:
            await client.get(server.url)
    assert info.value.actual == BOB and info.value.expected == {CAROL}


@pytest.mark.usefixtures("tls_stack")
def test_wrong_server_identity_is_refused_before_the_request(
    ca: CertificateAuthority, server: Served
) -> None:
    alice = issue(ca, ALICE)
    client = httpx.Client(transport=MtlsTransport(lambda: alice, {CAROL}))
    with client, pytest.raises(PeerIdentityError) as info:
        client.get(server.url)
    err = info.value
    assert err.expected == {CAROL} and err.actual == BOB
    assert f"127.0.0.1:{server.port}" in str(err) and CAROL in str(err) and BOB in str(err)
    assert err.request.url == httpx.URL(server.url)
    assert server.scopes == []  # not one request byte reached the app


def test_plaintext_client_to_strict_gets_426(server: Served) -> None:
    response = httpx.get(server.url)
    assert response.status_code == 426 and "STRICT" in response.text
    assert server.scopes == []


@pytest.mark.usefixtures("tls_stack")
def test_client_from_another_ca_is_refused(server: Served, tmp_path: Path) -> None:
    stranger = issue(CertificateAuthority.open(CaSettings(tmp_path / "other")), ALICE)
    client = httpx.Client(transport=MtlsTransport(lambda: stranger, {BOB}))
    with client, pytest.raises(httpx.ConnectError, match=r"(?i)certificate verify failed"):
        client.get(server.url)  # our side cannot verify the server either
    # A client that trusts the mesh root but holds another CA's certificate.
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    lax.check_hostname, lax.verify_mode = False, ssl.CERT_NONE
    (tmp_path / "c.pem").write_text(stranger.chain_pem)
    (tmp_path / "k.pem").write_bytes(stranger.private_key_pem())
    lax.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url.replace("http:", "https:"), verify=lax)
    assert server.scopes == []


@pytest.mark.usefixtures("tls_stack")
def test_permissive_serves_both_on_one_port(ca: CertificateAuthority, server: Served) -> None:
    server.mode.append(TlsMode.PERMISSIVE)
    alice = issue(ca, ALICE)
    with httpx.Client(transport=MtlsTransport(lambda: alice, {BOB})) as client:
        assert client.get(server.url).text == ALICE
    assert httpx.get(server.url).text == "plaintext"
    assert "tls" not in server.scopes[1].get("extensions", {})
    server.mode.append(TlsMode.DISABLE)
    assert httpx.get(server.url).text == "plaintext"
    client = httpx.Client(transport=MtlsTransport(lambda: alice, {BOB}))
    with client, pytest.raises(httpx.TransportError):
        client.get(server.url)


@pytest.mark.usefixtures("tls_stack")
def test_default_loop_is_uvloop_and_serves_both_modes(
    ca: CertificateAuthority, server: Served
) -> None:
    """uvloop when importable (its TLS costs less CPU than asyncio's sslproto):
    the peek, start_tls and the hand-over work on its transports, which are no
    asyncio.Transport subclasses. The fixture runs uvicorn with loop= unset."""
    uvloop = pytest.importorskip("uvloop")
    server.mode.append(TlsMode.PERMISSIVE)
    alice = issue(ca, ALICE)
    with httpx.Client(transport=MtlsTransport(lambda: alice, {BOB})) as client:
        assert [client.get(server.url).text for _ in range(2)] == [ALICE, ALICE]  # kept alive
    assert httpx.get(server.url).text == "plaintext"
    assert server.scopes[0]["scheme"] == "https" and server.scopes[2]["scheme"] == "http"
    if server.loop == "auto":
        assert server.loops == {uvloop.Loop}
    else:
        assert server.loops and uvloop.Loop not in server.loops


def test_silent_and_split_clients(ca: CertificateAuthority, server: Served) -> None:
    """A client that sends nothing is closed after the sniff timeout; a
    ClientHello in pieces (the first read holds one byte) still handshakes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as silent:
        assert silent.recv(1) == b""  # closed by the server, not by our timeout
    alice = issue(ca, ALICE)
    context = alice.client_ssl_context(())
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.sendall(hello[:1])
        threading.Event().wait(0.2)  # the server reads the one byte alone
        raw.sendall(hello[1:])
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending = outgoing.read()
                if pending:
                    raw.sendall(pending)
                incoming.write(raw.recv(65536))
        raw.sendall(outgoing.read())
        tls.write(b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        raw.sendall(outgoing.read())
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                incoming.write(raw.recv(65536))
    assert answer.startswith(b"HTTP/1.1 200")


def test_loop_stays_overridable(ca: CertificateAuthority) -> None:
    bob = issue(ca, BOB)
    inbound = InboundTls(credentials=lambda: bob, mode=lambda port: TlsMode.STRICT)
    assert MeshUvicornConfig(None, inbound=inbound).loop == "auto"
    assert MeshUvicornConfig(None, inbound=inbound, loop="asyncio").loop == "asyncio"


@pytest.mark.usefixtures("tls_stack")
def test_rotation_reaches_new_connections_only(ca: CertificateAuthority, server: Served) -> None:
    current = [issue(ca, ALICE)]
    transport = MtlsTransport(lambda: current[-1], {BOB})
    with httpx.Client(transport=transport) as client:
        assert client.get(server.url).status_code == 200
        current.append(issue(ca, ALICE))
        server.creds.append(issue(ca, BOB))
        client.get(server.url)  # the kept-alive connection: old certificates
        client.get(server.url, headers={"connection": "close"})
        client.get(server.url)  # a new connection: the new certificate
    leaves = [
        Certificate.from_pem(s["extensions"]["tls"]["client_cert_chain"][0]) for s in server.scopes
    ]
    assert leaves == [current[0].leaf] * 3 + [current[1].leaf]


class _FakeMesh:
    mtls = True

    def __init__(self, creds: Credentials) -> None:
        self._creds = creds

    def credentials(self) -> Credentials:
        return self._creds

    outbound_credentials = credentials


async def test_registries_key_pools_by_expected_identities(ca: CertificateAuthority) -> None:
    mesh = _FakeMesh(issue(ca, ALICE))
    sync = TlsTransports(mesh)
    assert sync.for_cluster(None) is None
    a = sync.for_cluster(UpstreamTls((BOB,)))
    assert a is not None and a is sync.for_cluster(UpstreamTls((BOB,)))
    assert a is not sync.for_cluster(UpstreamTls((BOB, CAROL)))
    assert TlsTransports(type("NoTls", (), {"mtls": False})()).for_cluster(UpstreamTls()) is None
    sync.close()
    aio = AsyncTlsTransports(mesh)
    b = aio.for_cluster(UpstreamTls((BOB,), sni="bob.shop"))
    assert b is not None and b.expected == {BOB} and b.sni == "bob.shop"
    await aio.aclose()


def test_grpc_server_credentials_rotate_and_require_a_client_certificate(
    ca: CertificateAuthority,
) -> None:
    current = [issue(ca, BOB)]
    grpc_server = grpc.server(futures.ThreadPoolExecutor(2))
    port = grpc_server.add_secure_port("127.0.0.1:0", grpc_server_credentials(lambda: current[-1]))
    grpc_server.start()
    try:
        alice = issue(ca, ALICE)

        def handshake(ctx: ssl.SSLContext) -> tuple[bytes, bytes]:
            """(server leaf, first byte of the server's HTTP/2 SETTINGS)."""
            raw = socket.create_connection(("127.0.0.1", port))
            with raw, ctx.wrap_socket(raw) as tls:
                der = tls.getpeercert(binary_form=True) or b""
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                try:
                    return der, tls.recv(1)
                except (ssl.SSLError, ConnectionError):
                    return der, b""

        first, settings = handshake(alice.client_ssl_context(("h2",)))
        assert settings != b""  # accepted: grpc speaks HTTP/2 to us
        current.append(issue(ca, BOB))
        second, _ = handshake(alice.client_ssl_context(("h2",)))
        assert Certificate.from_der(first) == current[0].leaf
        assert Certificate.from_der(second) == current[1].leaf
        anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        anonymous.check_hostname = False
        anonymous.load_verify_locations(cadata=alice.roots_pem)
        anonymous.set_alpn_protocols(["h2"])
        assert handshake(anonymous)[1] == b""  # no client certificate: cut off
    finally:
        grpc_server.stop(None)


@pytest.mark.parametrize("use_uvloop", [False, True])
def test_accepted_connections_turn_nagle_off(use_uvloop: bool) -> None:
    """A listening socket from socket.socket() (protocol field 0, as uvicorn's
    bind_socket makes) gets no TCP_NODELAY from asyncio; the mesh server's
    connection_made turns it on, or each mTLS answer waits ~40 ms for an ACK."""
    import socket

    import uvloop

    from proxyless_mesh.integrations._serving import _no_delay

    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            _no_delay(transport)
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def main() -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        assert listener.proto == 0
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        async with server:
            reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            await reader.read()  # the server closes once it has looked
            writer.close()

    (uvloop.run if use_uvloop else asyncio.run)(main())
    assert seen == [1]


@pytest.mark.usefixtures("tls_stack")
def test_bodies_arrive_intact_over_one_kept_alive_connection(
    ca: CertificateAuthority, server: Served
) -> None:
    """Through the head-joining stream (_coalescing.py) over real mTLS: a 3 MiB
    body both ways (many records each way), a chunked request body with a
    piece over the joining limit and an empty one, a body-less request; one
    connection throughout, TLS 1.3."""
    alice = issue(ca, ALICE)
    big = bytes(range(256)) * (3 * 4096)
    pieces = [b"a" * 10, b"b" * 20_000, b"", b"c" * 70_000, b"d"]
    echo = server.url.replace("/hello", "/echo")
    with httpx.Client(transport=MtlsTransport(lambda: alice, {BOB})) as client:
        first = client.post(echo, content=big)
        assert first.content == big and "content-length" not in first.headers
        assert client.post(echo, content=iter(pieces)).content == b"".join(pieces)
        assert client.get(server.url).text == ALICE  # peer identity seen by the app
        assert client.post(echo, content=b"x" * 1024).content == b"x" * 1024
        stream = first.extensions["network_stream"]
        assert stream.get_extra_info("ssl_object").version() == "TLSv1.3"
    assert len({s["client"] for s in server.scopes}) == 1  # one connection, kept alive


@pytest.mark.usefixtures("tls_stack")
def test_read_timeout_then_a_new_connection(ca: CertificateAuthority, server: Served) -> None:
    """A server slower than the read timeout gives httpx.ReadTimeout; the pool
    then connects anew and the next request succeeds."""
    alice = issue(ca, ALICE)
    slow = server.url.replace("/hello", "/slow")
    with httpx.Client(transport=MtlsTransport(lambda: alice, {BOB}), timeout=5) as client:
        assert client.get(server.url).text == ALICE
        with pytest.raises(httpx.ReadTimeout):
            client.post(slow, content=b"z", timeout=httpx.Timeout(5, read=0.3))
        response = client.post(server.url.replace("/hello", "/echo"), content=b"after")
        assert response.content == b"after"
    assert len({s["client"] for s in server.scopes}) == 2
