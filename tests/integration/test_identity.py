"""Identity end to end: a real `meshctl control-plane` with its CA, tokens from
`meshctl token create`, two workloads with different identities getting
certificates over gRPC, and real mutual TLS between them on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from identity_support import as_certificates
from mesh_control_plane.ca import CaSettings, CertificateAuthority
from meshlab import LocalMesh

from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.errors import PeerIdentityError, TokenRejectedError
from proxyless_mesh.security import (
    Credentials,
    IdentityConfig,
    IdentityManager,
    SpiffeId,
    make_csr,
    new_private_key,
    peer_spiffe_id,
    verify_peer,
)

FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend"
REVIEWS = "spiffe://cluster.local/ns/shop/sa/reviews"


async def _workload(lab: LocalMesh, sa: str, token: str) -> IdentityManager:
    path = lab.bootstrap(f"{sa}-1", "shop", sa, token=token)
    manager = IdentityManager(IdentityConfig.from_bootstrap(Bootstrap.from_file(path), {}))
    await manager.start()
    return manager


@pytest.fixture
async def workloads(lab: LocalMesh) -> AsyncIterator[tuple[IdentityManager, IdentityManager]]:
    lab.start_control_plane(extra_args=["--leaf-ttl", "1h"])
    frontend = await _workload(lab, "frontend", lab.token("shop", "frontend"))
    reviews = await _workload(lab, "reviews", lab.token("shop", "reviews"))
    try:
        yield frontend, reviews
    finally:
        await frontend.close()
        await reviews.close()


@pytest.fixture
async def reviews_server(
    workloads: tuple[IdentityManager, IdentityManager],
) -> AsyncIterator[tuple[int, list[str | None]]]:
    _, reviews = workloads
    seen: list[str | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(peer_spiffe_id(writer.get_extra_info("ssl_object")))
        writer.write(b"hello " + (seen[-1] or "").encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=reviews.server_ssl_context())
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()
        await server.wait_closed()


async def test_two_workloads_talk_mutual_tls(
    workloads: tuple[IdentityManager, IdentityManager],
    reviews_server: tuple[int, list[str | None]],
    lab: LocalMesh,
) -> None:
    frontend, reviews = workloads
    port, seen = reviews_server
    assert frontend.credentials.spiffe_id == FRONTEND
    assert reviews.credentials.spiffe_id == REVIEWS
    lifetime = frontend.credentials.expires_at - frontend.credentials.fetched_at
    assert 3500 < lifetime <= 3600  # --leaf-ttl 1h

    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=frontend.client_ssl_context()
    )
    assert verify_peer(writer.get_extra_info("ssl_object"), {REVIEWS}) == REVIEWS
    assert await reader.read() == f"hello {FRONTEND}".encode()
    writer.close()
    assert seen == [FRONTEND]

    # The CA's state: the generated root and both keys, owner-only.
    for path in lab.ca_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_wrong_expected_identity_is_refused_with_a_typed_error(
    workloads: tuple[IdentityManager, IdentityManager],
    reviews_server: tuple[int, list[str | None]],
) -> None:
    frontend, _ = workloads
    port, _ = reviews_server
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=frontend.client_ssl_context())
    with pytest.raises(PeerIdentityError) as info:
        verify_peer(writer.get_extra_info("ssl_object"), {FRONTEND}, peer=f"127.0.0.1:{port}")
    writer.close()
    assert info.value.actual == REVIEWS and info.value.expected == {FRONTEND}


async def test_a_client_with_another_cas_certificate_is_refused(
    workloads: tuple[IdentityManager, IdentityManager],
    reviews_server: tuple[int, list[str | None]],
    tmp_path: Path,
) -> None:
    _, reviews = workloads
    port, seen = reviews_server
    other = CertificateAuthority.open(CaSettings(tmp_path / "other-ca"))
    key = new_private_key()
    csr = x509.load_pem_x509_csr(make_csr(key, SpiffeId.parse(FRONTEND)).encode())
    chain = other.sign(csr, FRONTEND, 600)
    # Claims frontend's identity and trusts the mesh roots, so the server's
    # check of the client certificate is the only thing that can stop it.
    impostor = Credentials(
        key, as_certificates(chain[:1]), reviews.credentials.roots, fetched_at=0.0
    )
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=impostor.client_ssl_context()
    )
    try:
        got = await reader.read()
    except (ssl.SSLError, ConnectionResetError):
        got = b""
    writer.close()
    assert got == b"" and seen == []


async def test_the_ca_refuses_a_token_for_another_identity(lab: LocalMesh) -> None:
    lab.start_control_plane()
    token = lab.token("shop", "frontend")
    path = lab.bootstrap("reviews-2", "shop", "reviews", token=token)
    manager = IdentityManager(IdentityConfig.from_bootstrap(Bootstrap.from_file(path), {}))
    with pytest.raises(TokenRejectedError) as info:
        await manager.start()
    await manager.close()
    assert info.value.code == "PERMISSION_DENIED"
    assert REVIEWS in info.value.reason and FRONTEND in info.value.reason
    control_plane_log = lab.control_plane.log.read_text() if lab.control_plane else ""
    assert "refused a certificate request" in control_plane_log
    assert token not in control_plane_log
