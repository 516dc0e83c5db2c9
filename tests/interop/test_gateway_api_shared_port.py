"""An HTTPS (Terminate) and a TLS (Passthrough) Gateway API listener on one
port of a real Envoy gateway, told apart by SNI (the Gateway API allows it):
a client naming the HTTPS listener's host gets the gateway's certificate and
the HTTPRoute's backend; one naming a TLSRoute's host reaches the external
HTTPS server's own certificate, never decrypted; the same port, one Envoy
listener."""

from __future__ import annotations

import json
import ssl
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import (
    API,
    PrivateCa,
    first_passthrough_get,
    https_server,
    listener_ports,
    running_gateway,
    serving,
    wait_for_listener,
)
from meshlab import LocalMesh

pytestmark = pytest.mark.interop

NS = "shop"
WEB = "web.shop.test"
GW_API = "gateway.networking.k8s.io"


class _Web(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "3")
        self.end_headers()
        self.wfile.write(b"web")

    def log_message(self, *args: Any) -> None:
        pass


def _doc(api: str, kind: str, name: str, spec: dict[str, Any]) -> str:
    meta = {"name": name, "namespace": NS}
    return json.dumps({"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec})


def _service(name: str, protocol: str, number: int, port: int) -> str:
    spec = {
        "hosts": [f"{name}.{NS}.svc.cluster.local"],
        "location": "MESH_EXTERNAL",
        "resolution": "STATIC",
        "ports": [{"number": number, "name": "p", "protocol": protocol}],
        "endpoints": [{"address": "127.0.0.1", "ports": {"p": port}}],
    }
    return _doc("networking.istio.io/v1", "ServiceEntry", name, spec)


def _config(web_port: int, api_port: int) -> str:
    listeners = [
        {
            "name": "https",
            "port": 8443,
            "protocol": "HTTPS",
            "hostname": WEB,
            "tls": {"mode": "Terminate", "certificateRefs": [{"name": "web-cert"}]},
        },
        {
            "name": "tls",
            "port": 8443,
            "protocol": "TLS",
            "hostname": "*.external.test",
            "tls": {"mode": "Passthrough"},
        },
    ]
    web = {
        "parentRefs": [{"name": "edge", "sectionName": "https"}],
        "hostnames": [WEB],
        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}],
    }
    api = {
        "parentRefs": [{"name": "edge", "sectionName": "tls"}],
        "hostnames": [API],
        "rules": [{"backendRefs": [{"name": "api", "port": 443}]}],
    }
    gateway = {"gatewayClassName": "proxyless-mesh", "listeners": listeners}
    return "\n---\n".join(
        [
            _service("web", "HTTP", 80, web_port),
            _service("api", "TLS", 443, api_port),
            _doc(f"{GW_API}/v1", "Gateway", "edge", gateway),
            _doc(f"{GW_API}/v1", "HTTPRoute", "web", web),
            _doc(f"{GW_API}/v1alpha2", "TLSRoute", "api", api),
        ]
    )


def _routed_get(client: httpx.Client, url: str, host: str) -> httpx.Response:
    """GET `url` as `host` (SNI and Host) once the gateway routes it (its
    chain and then its route table arrive: until then, closed or 404)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            response = client.get(url, headers={"host": host}, extensions={"sni_hostname": host})
            if response.status_code != 404:
                return response
        except httpx.ConnectError:
            pass
        assert time.monotonic() < deadline, f"{host} is not routed"
        time.sleep(0.1)


def test_https_and_tls_listeners_share_a_port_by_sni(lab: LocalMesh, tmp_path: Path) -> None:
    gateway_ca, external_ca = PrivateCa.create("gateway CA"), PrivateCa.create("external CA")
    credentials = tmp_path / "credentials"
    gateway_ca.write_credential(credentials, "web-cert", WEB)
    with (
        serving(ThreadingHTTPServer(("127.0.0.1", 0), _Web)) as web_port,
        https_server(external_ca, API) as api_port,
    ):
        lab.write_config("edge.yaml", _config(web_port, api_port))
        lab.start_control_plane()
        label = f"{GW_API}/gateway-name=edge"
        with running_gateway(lab, "edge", NS, credentials, labels=(label,)) as admin:
            port = wait_for_listener(admin, "0.0.0.0_8443")
            assert list(listener_ports(admin)) == ["0.0.0.0_8443"]  # one Envoy listener
            url = f"https://127.0.0.1:{port}/v1"
            # Passed through: the external server's own certificate and SNI.
            trusting_external = ssl.create_default_context(cadata=external_ca.cert_pem.decode())
            with httpx.Client(verify=trusting_external, timeout=10) as client:
                response = first_passthrough_get(client, url, API)
                assert response.json() == {"sni": API, "client": None, "path": "/v1"}
            # Terminated: the gateway's certificate for WEB (a client trusting only
            # the gateway's CA), then the HTTPRoute's backend.
            trusting_gateway = ssl.create_default_context(cadata=gateway_ca.cert_pem.decode())
            with httpx.Client(verify=trusting_gateway, timeout=10) as client:
                response = _routed_get(client, f"https://127.0.0.1:{port}/", WEB)
                assert (response.status_code, response.text) == (200, "web")
            # Neither listener's name: no chain, the connection is closed.
            with (
                httpx.Client(verify=False, timeout=10) as client,
                pytest.raises(httpx.ConnectError),
            ):
                client.get(url, extensions={"sni_hostname": "nobody.other.test"})
