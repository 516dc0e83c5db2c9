"""Mesh mTLS end to end on 127.0.0.1: a real `meshctl control-plane` with its
CA, two workloads (`Mesh` objects with join tokens for different
identities), the server's ASGI app under uvicorn through the mesh protocol,
the client through the mTLS transports."""

from __future__ import annotations

import contextlib
import logging
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from identities import (
    FRONTEND,
    RATINGS,
    REVIEWS,
    listening_socket,
    start_control_plane,
    workload_mesh,
)
from identity_support import as_certificates
from mesh_control_plane.ca import CaSettings, CertificateAuthority
from meshlab import LocalMesh

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.errors import IdentityError, PeerIdentityError, TokenRejectedError
from proxyless_mesh.integrations._asgi import tls_peer_principal
from proxyless_mesh.integrations._tls_transport import TlsTransports
from proxyless_mesh.model import UpstreamTls
from proxyless_mesh.security import Credentials, SpiffeId, make_csr, new_private_key
from proxyless_mesh.serving import asgi_config


@dataclass
class Workloads:
    frontend: Mesh
    reviews: Mesh
    creds_dir: Path


@pytest.fixture
def workloads(lab: LocalMesh, tmp_path: Path) -> Iterator[Workloads]:
    start_control_plane(lab)
    creds_dir = tmp_path / "frontend-certs"
    frontend = workload_mesh(lab, "frontend-1", "frontend", credentials_dir=creds_dir)
    reviews = workload_mesh(lab, "reviews-1", "reviews")
    with frontend, reviews:
        yield Workloads(frontend, reviews, creds_dir)


@dataclass
class Served:
    port: int
    principals: list[str | None] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/reviews/1"


@contextlib.contextmanager
def _serve(mesh: Mesh, mode: str) -> Iterator[Served]:
    sock = listening_socket()
    served = Served(sock.getsockname()[1])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        principal = tls_peer_principal(scope)  # what the authorization middleware reads
        served.principals.append(principal)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": (principal or "plaintext").encode()})

    config = asgi_config(app, mesh, mode=mode, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def strict(workloads: Workloads) -> Iterator[Served]:
    with _serve(workloads.reviews, "STRICT") as served:
        yield served


@pytest.fixture
def permissive(workloads: Workloads) -> Iterator[Served]:
    with _serve(workloads.reviews, "PERMISSIVE") as served:
        yield served


def _client(mesh: Mesh, expected: tuple[str, ...]) -> httpx.Client:
    transport = TlsTransports(mesh).for_cluster(UpstreamTls(expected))
    assert transport is not None
    return httpx.Client(transport=transport)


def test_two_identities_talk_mutual_tls(workloads: Workloads, strict: Served) -> None:
    assert workloads.frontend.identity == FRONTEND and workloads.reviews.identity == REVIEWS
    with _client(workloads.frontend, (REVIEWS,)) as client:
        for _ in range(3):
            response = client.get(strict.url)
            assert response.status_code == 200 and response.text == FRONTEND
    assert strict.principals == [FRONTEND] * 3


def test_refusals_each_with_its_own_error(
    workloads: Workloads, strict: Served, tmp_path: Path
) -> None:
    # 1. plaintext client: the STRICT port answers 426 and closes.
    plain = httpx.get(strict.url)
    assert plain.status_code == 426 and "mutual TLS required" in plain.text
    # 2. the server is not who the destination's policy names.
    with _client(workloads.frontend, (RATINGS,)) as client, pytest.raises(PeerIdentityError) as e:
        client.get(strict.url)
    assert e.value.actual == REVIEWS and e.value.expected == {RATINGS}
    assert f"presented {REVIEWS}, expected {RATINGS}" in str(e.value)
    # 3. a client whose certificate comes from another CA (it trusts the mesh
    #    root, so only the server's check of the client certificate stops it).
    other = CertificateAuthority.open(CaSettings(tmp_path / "other-ca"))
    key = new_private_key()
    csr = x509.load_pem_x509_csr(make_csr(key, SpiffeId.parse(FRONTEND)).encode())
    roots = workloads.frontend.credentials().roots
    impostor = Credentials(
        key, as_certificates(other.sign(csr, FRONTEND, 600)[:1]), roots, fetched_at=0
    )
    transport = TlsTransports(_Fixed(impostor)).for_cluster(UpstreamTls((REVIEWS,)))
    assert transport is not None
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.TransportError) as t:
        client.get(strict.url)
    assert not isinstance(t.value, PeerIdentityError)
    assert strict.principals == []  # none of the three reached the app


class _Fixed:
    """A mesh stand-in holding fixed credentials (for the impostor)."""

    mtls = True

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def credentials(self) -> Credentials:
        return self._credentials

    outbound_credentials = credentials


def test_permissive_serves_mtls_and_plaintext_on_one_port(
    workloads: Workloads, permissive: Served
) -> None:
    with _client(workloads.frontend, (REVIEWS,)) as client:
        assert client.get(permissive.url).text == FRONTEND
    assert httpx.get(permissive.url).text == "plaintext"
    assert permissive.principals == [FRONTEND, None]


def test_the_key_stays_private(
    lab: LocalMesh, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    start_control_plane(lab)
    creds_dir = tmp_path / "certs"
    token = lab.token("shop", "frontend")
    path = lab.bootstrap("frontend-2", "shop", "frontend", token=token, credentials_dir=creds_dir)
    with caplog.at_level(logging.DEBUG), Mesh(Bootstrap.from_file(path)) as mesh:
        with _serve(mesh, "STRICT") as target, _client(mesh, (FRONTEND,)) as client:
            assert client.get(target.url).text == FRONTEND
        key_pem = mesh.credentials().private_key_pem().decode()
    body = "".join(line for line in key_pem.splitlines() if "-----" not in line)
    logged = caplog.text + (lab.control_plane.log.read_text() if lab.control_plane else "")
    assert body[:40] not in logged and token not in logged
    for file in creds_dir.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    assert stat.S_IMODE(creds_dir.stat().st_mode) == 0o700


def test_a_refused_token_fails_the_mesh_start_with_a_typed_error(lab: LocalMesh) -> None:
    lab.start_control_plane()
    token = lab.token("shop", "frontend")
    mesh = Mesh(Bootstrap.from_file(lab.bootstrap("reviews-9", "shop", "reviews", token=token)))
    with pytest.raises(TokenRejectedError) as info:
        mesh.start()
    assert info.value.code == "PERMISSION_DENIED" and REVIEWS in info.value.reason
    assert mesh.identity_manager is None


def test_without_a_ca_the_mesh_stays_plaintext(lab: LocalMesh) -> None:
    lab.start_control_plane()
    with Mesh(Bootstrap.from_file(lab.bootstrap("plain-1", "shop", "plain"))) as mesh:
        assert mesh.identity is None and not mesh.mtls
        assert TlsTransports(mesh).for_cluster(UpstreamTls((REVIEWS,))) is None
        with pytest.raises(IdentityError, match="no workload identity"):
            mesh.credentials()
