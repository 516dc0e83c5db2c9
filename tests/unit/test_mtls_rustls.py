"""The sync mTLS transport's two TLS stacks, rustls (the default) and Python's
ssl (PROXYLESS_MESH_TLS=openssl), held to the same behaviour against a real
mTLS server: which stack carries the requests, the refusal of a server from
another root, and the per-try deadline's watchdog ending a stalled body read
(it shuts the socket down under the stream, whichever stack reads it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mesh_control_plane.ca import CaSettings, CertificateAuthority
from mtls_server_support import ALICE, BOB, Served, ca, issue, serve, tls_stack

from proxyless_mesh.errors import UpstreamTimeoutError
from proxyless_mesh.integrations import _tls_transport
from proxyless_mesh.integrations._httpx_deadline import SyncBoundedBody, body_timeout
from proxyless_mesh.integrations._tls_transport import MtlsTransport

__all__ = ["ca", "tls_stack"]  # the shared fixtures (mtls_server_support.py)


@pytest.fixture
def server(ca: CertificateAuthority) -> Iterator[Served]:
    with serve(ca, "auto") as served:
        yield served


def test_server_from_another_root_is_refused(
    server: Served, ca: CertificateAuthority, tmp_path: Path, tls_stack: str
) -> None:
    """A server whose certificate chains to another root (it names the
    expected identity) is refused by the handshake: ConnectError, before a
    request byte, on both stacks; the connection is not kept."""
    server.creds.append(issue(CertificateAuthority.open(CaSettings(tmp_path / "other")), BOB))
    alice = issue(ca, ALICE)
    with httpx.Client(transport=MtlsTransport(lambda: alice, {BOB})) as client:
        for _ in range(2):
            with pytest.raises(httpx.ConnectError, match=r"(?i)certificate verify failed"):
                client.get(server.url)
    assert server.scopes == []


def test_the_selected_stack_carries_the_requests(
    ca: CertificateAuthority, server: Served, tls_stack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROXYLESS_MESH_TLS picks the stack: rustls makes the handshake (and is
    the stream httpcore reads) unless it says openssl."""
    handshakes: list[str | None] = []
    real = _tls_transport.start_rustls

    def spy(tcp: Any, config: Any, server_hostname: str | None, timeout: float | None) -> Any:
        handshakes.append(server_hostname)
        return real(tcp, config, server_hostname, timeout)

    monkeypatch.setattr(_tls_transport, "start_rustls", spy)
    alice = issue(ca, ALICE)
    with httpx.Client(transport=MtlsTransport(lambda: alice, {BOB})) as client:
        response = client.get(server.url)
        assert response.text == ALICE
        stream = response.extensions["network_stream"]
        ssl_object = stream.get_extra_info("ssl_object")
        assert ssl_object.selected_alpn_protocol() is None  # this server selects none
        assert ssl_object.getpeercert(True) == server.creds[-1].leaf.der
    if tls_stack == "rustls":
        assert handshakes == ["127.0.0.1"]
        assert type(stream).__name__ == "TlsStream"
    else:
        assert handshakes == []
        assert type(stream).__name__ != "TlsStream"


def test_a_stalled_body_ends_at_the_deadline(
    ca: CertificateAuthority, server: Served, tls_stack: str
) -> None:
    """The head arrives, the body stalls (3 s): the watchdog's shutdown ends
    the blocked read at the 0.3 s deadline with UpstreamTimeoutError."""
    alice = issue(ca, ALICE)
    stall = server.url.replace("/hello", "/stall")
    with MtlsTransport(lambda: alice, {BOB}) as transport:
        request = httpx.Request("POST", stall, content=b"s" * 100)
        response = transport.handle_request(request)
        assert response.status_code == 200
        stream = response.extensions["network_stream"]
        started = time.monotonic()
        body = SyncBoundedBody(
            response.stream,  # type: ignore[arg-type]
            stream,
            started + 0.3,
            lambda: body_timeout(request, 0.3),
        )
        with pytest.raises(UpstreamTimeoutError):
            for _ in body:
                pass
        assert time.monotonic() - started < 2.0  # not the server's 3 s
