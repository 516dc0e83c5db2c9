"""A real mTLS server for the client transports' tests: uvicorn with the
library's mTLS protocol on 127.0.0.1, serving BOB's certificate from an
in-process CA, with its mode and credentials swappable while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from cryptography import x509
from identity_support import as_certificates
from mesh_control_plane.ca import CaSettings, CertificateAuthority

from proxyless_mesh.integrations._rustls import ENV as TLS_STACK_ENV
from proxyless_mesh.integrations._serving import MeshUvicornConfig
from proxyless_mesh.model import TlsMode
from proxyless_mesh.security import Credentials, SpiffeId, make_csr, new_private_key
from proxyless_mesh.security._inbound import InboundTls

ALICE = SpiffeId("cluster.local", "shop", "alice").uri
BOB = SpiffeId("cluster.local", "shop", "bob").uri
CAROL = SpiffeId("cluster.local", "shop", "carol").uri


def issue(ca: CertificateAuthority, uri: str) -> Credentials:
    key = new_private_key()
    csr = x509.load_pem_x509_csr(make_csr(key, SpiffeId.parse(uri)).encode())
    chain = ca.sign(csr, uri, 600)
    return Credentials(
        key, as_certificates(chain[:-1]), as_certificates(ca.trust_bundle()), fetched_at=0.0
    )


@pytest.fixture(params=["rustls", "openssl"])
def tls_stack(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The sync transport's TLS stack, read when a transport is made."""
    monkeypatch.setenv(TLS_STACK_ENV, request.param)
    stack: str = request.param
    return stack


@pytest.fixture
def ca(tmp_path: Any) -> CertificateAuthority:
    return CertificateAuthority.open(CaSettings(tmp_path / "ca"))


@dataclass
class Served:
    port: int
    mode: list[TlsMode]
    creds: list[Credentials]
    scopes: list[dict[str, Any]] = field(default_factory=list)
    loops: set[type[asyncio.AbstractEventLoop]] = field(default_factory=set)
    loop: str = "auto"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hello"


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    """The request body back in 64 KiB chunks, chunked transfer encoding (no
    content-length); /slow first waits 2 s; /stall sends the first chunk,
    then waits 3 s before the rest."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(2)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for at in range(0, len(body), 65536):
        await send({"type": "http.response.body", "body": body[at : at + 65536], "more_body": True})
        if scope["path"] == "/stall":
            await asyncio.sleep(3)
    await send({"type": "http.response.body", "body": b""})


@contextlib.contextmanager
def serve(ca: CertificateAuthority, loop: str) -> Iterator[Served]:
    """uvicorn serving BOB's certificate, STRICT, on `loop` ("auto": left
    unset, so uvloop when importable; or "asyncio"). /hello answers the
    client's SPIFFE ID (or "plaintext"); /echo, /slow, /stall see _echo."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    served = Served(sock.getsockname()[1], [TlsMode.STRICT], [issue(ca, BOB)], loop=loop)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        served.scopes.append(scope)
        served.loops.add(type(asyncio.get_running_loop()))
        if scope["path"] in ("/echo", "/slow", "/stall"):
            await _echo(scope, receive, send)
            return
        tls = scope.get("extensions", {}).get("tls")
        body = (tls["spiffe_id"] if tls else "plaintext").encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    inbound = InboundTls(
        credentials=lambda: served.creds[-1], mode=lambda port: served.mode[-1], sniff_timeout=1.0
    )
    options = {} if loop == "auto" else {"loop": loop}
    config = MeshUvicornConfig(app, inbound=inbound, log_level="warning", lifespan="off", **options)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        uv.should_exit = True
        thread.join(10)
        sock.close()
