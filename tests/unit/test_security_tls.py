"""SSL contexts from Credentials and the SPIFFE checks after the handshake, on
real TLS connections over 127.0.0.1 (asyncio streams)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from identity_support import as_certificates
from mesh_control_plane.ca import CaSettings, CertificateAuthority

from proxyless_mesh.errors import MeshError, PeerIdentityError
from proxyless_mesh.security import (
    Credentials,
    SpiffeId,
    make_csr,
    new_private_key,
    peer_spiffe_id,
    verify_peer,
)

ALICE = SpiffeId("cluster.local", "shop", "alice")
BOB = SpiffeId("cluster.local", "shop", "bob")


def issue(ca: CertificateAuthority, identity: SpiffeId) -> Credentials:
    key = new_private_key()
    csr = x509.load_pem_x509_csr(make_csr(key, identity).encode())
    chain = ca.sign(csr, identity.uri, 600)
    return Credentials(
        key, as_certificates(chain[:-1]), as_certificates(ca.trust_bundle()), fetched_at=0.0
    )


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.open(CaSettings(tmp_path / "ca"))


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]


@pytest.fixture
async def tls_server(
    ca: CertificateAuthority,
) -> AsyncIterator[tuple[int, list[str | None]]]:
    """A server for BOB; records the SPIFFE ID of each client it accepted."""
    seen: list[str | None] = []
    creds = issue(ca, BOB)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(peer_spiffe_id(writer.get_extra_info("ssl_object")))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=creds.server_ssl_context())
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()
        await server.wait_closed()


async def test_mutual_tls_each_side_reads_the_other(
    ca: CertificateAuthority, tls_server: tuple[int, list[str | None]]
) -> None:
    port, seen = tls_server
    client = issue(ca, ALICE)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client.client_ssl_context()
    )
    ssl_object = writer.get_extra_info("ssl_object")
    assert verify_peer(ssl_object, {BOB.uri}) == BOB.uri
    assert verify_peer(ssl_object, ()) == BOB.uri  # no expectation: any mesh identity
    assert ssl_object.version() in ("TLSv1.3", "TLSv1.2")
    assert await reader.read() == b"ok"
    writer.close()
    assert seen == [ALICE.uri]


async def test_wrong_expected_identity_is_a_typed_error(
    ca: CertificateAuthority, tls_server: tuple[int, list[str | None]]
) -> None:
    port, _ = tls_server
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=issue(ca, ALICE).client_ssl_context()
    )
    with pytest.raises(PeerIdentityError) as info:
        verify_peer(writer.get_extra_info("ssl_object"), {ALICE.uri}, peer="127.0.0.1")
    writer.close()
    err = info.value
    assert err.expected == {ALICE.uri} and err.actual == BOB.uri
    assert str(err) == f"peer at 127.0.0.1 presented {BOB.uri}, expected {ALICE.uri}"
    assert isinstance(err, httpx.TransportError) and isinstance(err, MeshError)


async def test_a_client_from_another_ca_is_refused(
    tmp_path: Path, tls_server: tuple[int, list[str | None]]
) -> None:
    port, seen = tls_server
    stranger = issue(CertificateAuthority.open(CaSettings(tmp_path / "other")), ALICE)
    # The stranger cannot verify our server either: use a context that skips that,
    # so what is tested is the server refusing the client certificate.
    ctx = stranger.client_ssl_context()
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    lax.check_hostname, lax.verify_mode = False, ssl.CERT_NONE
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    chain_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    chain_file.write_text(stranger.chain_pem)
    key_file.write_bytes(stranger.private_key_pem())
    lax.load_cert_chain(chain_file, key_file)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=lax)
    assert await _refused(reader)
    writer.close()
    assert seen == []


async def test_a_client_without_a_certificate_is_refused(
    ca: CertificateAuthority, tls_server: tuple[int, list[str | None]]
) -> None:
    port, seen = tls_server
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=issue(ca, ALICE).roots_pem)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    assert await _refused(reader)
    writer.close()
    assert seen == []


async def _refused(reader: asyncio.StreamReader) -> bool:
    """With TLS 1.3 the client's handshake ends before the server judged the
    client certificate; the verdict (an alert, or just the close) arrives
    with the first read. Either way no byte of the response gets through."""
    try:
        return await reader.read() == b""
    except (ssl.SSLError, ConnectionResetError):
        return True


def test_contexts_are_cached_per_credentials_and_tls12_minimum(ca: CertificateAuthority) -> None:
    creds = issue(ca, ALICE)
    ctx = creds.client_ssl_context()
    assert creds.client_ssl_context() is ctx
    assert creds.client_ssl_context(["h2"]) is not ctx
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and not ctx.check_hostname
    assert creds.server_ssl_context().verify_mode == ssl.CERT_REQUIRED
    assert creds.server_ssl_context(require_client_cert=False).verify_mode == ssl.CERT_OPTIONAL
    assert "PRIVATE" not in repr(creds)


def test_spiffe_id_parsing() -> None:
    assert SpiffeId.parse("spiffe://td/ns/a/sa/b") == SpiffeId("td", "a", "b")
    assert str(SpiffeId("td", "a", "b")) == "spiffe://td/ns/a/sa/b"
    for bad in ("http://td/ns/a/sa/b", "spiffe://td/a/b", "spiffe://td/ns/a/sa/b/c"):
        with pytest.raises(ValueError):
            SpiffeId.parse(bad)
    with pytest.raises(ValueError):
        SpiffeId("td", "a/b", "c")
