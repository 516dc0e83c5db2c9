"""Gateway HTTPS servers asking for client certificates, through a real Envoy
gateway: MUTUAL demands one signed by the credential's CA (`ca.crt`);
OPTIONAL_MUTUAL (Istio: "the client certificate is optional") serves a client
without one and still refuses one its CA did not sign."""

from __future__ import annotations

import json
import ssl
import tempfile
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import PrivateCa, running_gateway, serving, wait_for_listener
from meshlab import LocalMesh

pytestmark = pytest.mark.interop

NS = "default"
PUBLIC = "shop.example.com"


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def _config(backend: int) -> str:
    def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": NS},
            "spec": spec,
        }

    def server(number: int, mode: str) -> dict[str, Any]:
        return {
            "port": {"number": number, "name": f"https-{number}", "protocol": "HTTPS"},
            "hosts": [PUBLIC],
            "tls": {"mode": mode, "credentialName": "shop-cert"},
        }

    docs = [
        doc(
            "ServiceEntry",
            "backend",
            {
                "hosts": ["backend.default.svc"],
                "location": "MESH_EXTERNAL",
                "resolution": "STATIC",
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                "endpoints": [{"address": "127.0.0.1", "ports": {"http": backend}}],
            },
        ),
        doc(
            "Gateway",
            "edge",
            {
                "selector": {"istio": "edge"},
                "servers": [server(8443, "MUTUAL"), server(9443, "OPTIONAL_MUTUAL")],
            },
        ),
        doc(
            "VirtualService",
            "shop",
            {
                "hosts": [PUBLIC],
                "gateways": ["edge"],
                "http": [{"route": [{"destination": {"host": "backend.default.svc"}}]}],
            },
        ),
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


def _client(server_ca: PrivateCa, client_ca: PrivateCa | None, tmp: Path) -> httpx.Client:
    """Trusting the gateway's CA; presenting a certificate from `client_ca`."""
    context = ssl.create_default_context(cadata=server_ca.cert_pem.decode())
    if client_ca is not None:
        cert, key, _ = client_ca.server_pair("client.example.com")
        (tmp / "c.pem").write_bytes(cert)
        (tmp / "k.pem").write_bytes(key)
        context.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    return httpx.Client(verify=context, timeout=10)


@pytest.fixture
def ports(lab: LocalMesh, tmp_path: Path) -> Iterator[tuple[int, int, PrivateCa, PrivateCa]]:
    server_ca, client_ca = PrivateCa.create("gateway CA"), PrivateCa.create("client CA")
    credentials = tmp_path / "credentials"
    server_ca.write_credential(credentials, "shop-cert", PUBLIC)
    (credentials / "shop-cert" / "ca.crt").write_bytes(client_ca.cert_pem)
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _Ok)) as backend:
        lab.write_config("edge.yaml", _config(backend))
        lab.start_control_plane()
        with running_gateway(lab, "edge", NS, credentials) as admin:
            mutual = wait_for_listener(admin, "0.0.0.0_8443")
            optional = wait_for_listener(admin, "0.0.0.0_9443")
            yield mutual, optional, server_ca, client_ca


def test_optional_mutual_serves_without_a_certificate_and_checks_a_presented_one(
    ports: tuple[int, int, PrivateCa, PrivateCa],
) -> None:
    mutual, optional, server_ca, client_ca = ports
    stranger = PrivateCa.create("nobody's CA")

    def get(port: int, presenting: PrivateCa | None) -> httpx.Response:
        with tempfile.TemporaryDirectory() as tmp, _client(server_ca, presenting, Path(tmp)) as c:
            return c.get(
                f"https://127.0.0.1:{port}/",
                headers={"host": PUBLIC},
                extensions={"sni_hostname": PUBLIC},
            )

    deadline = time.monotonic() + 20
    while (status := _status(get, optional)) != 200:  # the route may follow the listener
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert get(optional, client_ca).text == "ok"  # a certificate its CA signed
    with pytest.raises(httpx.TransportError):
        get(optional, stranger)  # presented, not signed by ca.crt: refused
    assert get(mutual, client_ca).text == "ok"
    with pytest.raises(httpx.TransportError):
        get(mutual, None)  # MUTUAL demands one
    with pytest.raises(httpx.TransportError):
        get(mutual, stranger)


def _status(get: Any, port: int) -> int | str:
    try:
        return int(get(port, None).status_code)
    except httpx.TransportError as exc:
        return repr(exc)
