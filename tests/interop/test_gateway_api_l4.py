"""Gateway API TLS and TCP listeners through a real Envoy gateway, on 127.0.0.1.

A Gateway API Gateway with a TLS listener (mode Passthrough) and a TCP
listener, programmed into `meshctl gateway run`: a TLSRoute sends TLS by SNI,
untouched, to an HTTPS server with its own CA (the client verifies that
server's certificate, not the gateway's); a TCPRoute splits connections 80/20
between two echo servers. `meshctl gateway status --admin-address` reads the
Gateway's Programmed condition from the live ACKs (NoResources before its
Envoy runs, True once it ACKed), and a TLSRoute of a namespace the listener
does not admit is Accepted=False, NotAllowedByListeners. An HTTPS (Terminate)
and a TLS (Passthrough) listener share one port, told apart by SNI: the
HTTPS host gets the gateway's certificate and the HTTPRoute's backend, a
TLSRoute's host the external server's own certificate, never decrypted.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import (
    API,
    PrivateCa,
    echo_server,
    first_echo,
    first_passthrough_get,
    https_server,
    listener_ports,
    running_gateway,
    serving,
    tcp_echo,
    wait_for_listener,
)
from meshlab import LocalMesh
from stats import assert_binomial

pytestmark = pytest.mark.interop

NS = "shop"
CONNECTIONS = 200
B_SHARE = 0.2
ALPHA = "gateway.networking.k8s.io/v1alpha2"


def _doc(api: str, kind: str, name: str, spec: dict[str, Any], ns: str = NS) -> str:
    meta = {"name": name, "namespace": ns}
    return json.dumps({"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec})


def _service(name: str, protocol: str, number: int, port: int) -> str:
    """A Service of namespace shop (as Kubernetes would declare it) on 127.0.0.1:port."""
    spec = {
        "hosts": [f"{name}.{NS}.svc.cluster.local"],
        "location": "MESH_EXTERNAL",
        "resolution": "STATIC",
        "ports": [{"number": number, "name": "p", "protocol": protocol}],
        "endpoints": [{"address": "127.0.0.1", "ports": {"p": port}}],
    }
    return _doc("networking.istio.io/v1", "ServiceEntry", name, spec)


def _config(api_port: int, port_a: int, port_b: int) -> str:
    listeners = [
        {
            "name": "tls",
            "port": 8443,
            "protocol": "TLS",
            "hostname": "*.external.test",
            "tls": {"mode": "Passthrough"},
        },
        {"name": "tcp", "port": 9000, "protocol": "TCP"},
    ]
    gateway = {"gatewayClassName": "proxyless-mesh", "listeners": listeners}
    by_sni = {
        "parentRefs": [{"name": "edge"}],
        "hostnames": [API],
        "rules": [{"backendRefs": [{"name": "api", "port": 443}]}],
    }
    foreign = {**by_sni, "parentRefs": [{"name": "edge", "namespace": NS}]}
    split = {
        "parentRefs": [{"name": "edge"}],
        "rules": [
            {
                "backendRefs": [
                    {"name": "echo-a", "port": 7000, "weight": 80},
                    {"name": "echo-b", "port": 7000, "weight": 20},
                ]
            }
        ],
    }
    return "\n---\n".join(
        [
            _service("api", "TLS", 443, api_port),
            _service("echo-a", "TCP", 7000, port_a),
            _service("echo-b", "TCP", 7000, port_b),
            _doc("gateway.networking.k8s.io/v1", "Gateway", "edge", gateway),
            _doc(ALPHA, "TLSRoute", "api", by_sni),
            _doc(ALPHA, "TCPRoute", "split", split),
            # Another namespace: the TLS listener admits only its own (Same).
            _doc(ALPHA, "TLSRoute", "foreign", foreign, ns="other"),
        ]
    )


def _status(lab: LocalMesh) -> list[str]:
    meshctl = str(Path(sys.executable).parent / "meshctl")
    command = [meshctl, "gateway", "status", str(lab.config_dir)]
    command += ["--admin-address", lab.admin_address]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.splitlines()


def _programmed(lab: LocalMesh) -> str:
    (line,) = [s for s in _status(lab) if s.startswith("Gateway shop/edge: Programmed=")]
    return line


def test_tls_and_tcp_routes_through_the_gateway(lab: LocalMesh) -> None:
    ca = PrivateCa.create("external CA")
    with (
        https_server(ca, API) as api_port,
        echo_server(b"a") as port_a,
        echo_server(b"b") as port_b,
    ):
        lab.write_config("l4.yaml", _config(api_port, port_a, port_b))
        lab.start_control_plane()
        assert "Programmed=False (NoResources)" in _programmed(lab)
        assert (
            "TLSRoute other/foreign parent shop/edge: Accepted=False (NotAllowedByListeners): "
            "no listener of Gateway shop/edge admits TLSRoutes of namespace other "
            "(listeners[].allowedRoutes)"
        ) in _status(lab)
        # The foreign TLSRoute is not attached: one route per listener.
        assert _status(lab)[-2:] == [
            "Gateway shop/edge listener tls: attachedRoutes=1",
            "Gateway shop/edge listener tcp: attachedRoutes=1",
        ]
        label = "gateway.networking.k8s.io/gateway-name=edge"
        with running_gateway(lab, "edge", NS, labels=(label,)) as admin:
            tls_port = wait_for_listener(admin, "0.0.0.0_8443")
            tcp_port = wait_for_listener(admin, "0.0.0.0_9000")
            trusting = ssl.create_default_context(cadata=ca.cert_pem.decode())
            with httpx.Client(verify=trusting, timeout=10) as client:
                url = f"https://127.0.0.1:{tls_port}/v1"
                response = first_passthrough_get(client, url, API)
                # The external server's own certificate and SNI: never decrypted.
                assert response.json() == {"sni": API, "client": None, "path": "/v1"}
                # A name the listener admits but no TLSRoute names: no chain.
                with pytest.raises(httpx.ConnectError):
                    client.get(url, extensions={"sni_hostname": "other.external.test"})
            first_echo(tcp_port)
            tags = Counter(tcp_echo(tcp_port, b"y")[:1] for _ in range(CONNECTIONS))
            # The Envoy ACKed its listeners: Programmed, read from the live ACKs.
            deadline = time.monotonic() + 20
            while "Programmed=True (Programmed)" not in (line := _programmed(lab)):
                assert time.monotonic() < deadline, line
                time.sleep(0.2)
    assert set(tags) == {b"a", b"b"}, tags
    assert_binomial(tags[b"b"], CONNECTIONS, B_SHARE, "TCPRoute echo-b share")


def test_a_listener_its_envoy_cannot_bind_is_not_programmed(lab: LocalMesh) -> None:
    """Envoy NACKs a listener on a port another socket holds: the Gateway is
    Programmed=False, Invalid, with Envoy's own error."""
    with socket.socket() as taken, echo_server(b"a") as port_a:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listeners = [{"name": "tcp", "port": port, "protocol": "TCP"}]
        split = {
            "parentRefs": [{"name": "edge"}],
            "rules": [{"backendRefs": [{"name": "echo-a", "port": 7000}]}],
        }
        gateway = {"gatewayClassName": "proxyless-mesh", "listeners": listeners}
        docs = [
            _service("echo-a", "TCP", 7000, port_a),
            _doc("gateway.networking.k8s.io/v1", "Gateway", "edge", gateway),
            _doc(ALPHA, "TCPRoute", "bytes", split),
        ]
        lab.write_config("l4.yaml", "\n---\n".join(docs))
        lab.start_control_plane()
        label = "gateway.networking.k8s.io/gateway-name=edge"
        with running_gateway(lab, "edge", NS, labels=(label,), free_ports=False):
            deadline = time.monotonic() + 30
            while "(Invalid)" not in (line := _programmed(lab)):
                assert time.monotonic() < deadline, line
                time.sleep(0.2)
    assert "Programmed=False (Invalid): its Envoy rejected LDS" in line, line
    assert f"{port}" in line and "Address already in use" in line, line


WEB = "web.shop.test"


class _Web(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "3")
        self.end_headers()
        self.wfile.write(b"web")

    def log_message(self, *args: Any) -> None:
        pass


def _shared_port_config(web_port: int, api_port: int) -> str:
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
            _doc("gateway.networking.k8s.io/v1", "Gateway", "edge", gateway),
            _doc("gateway.networking.k8s.io/v1", "HTTPRoute", "web", web),
            _doc(ALPHA, "TLSRoute", "api", api),
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
        lab.write_config("edge.yaml", _shared_port_config(web_port, api_port))
        lab.start_control_plane()
        label = "gateway.networking.k8s.io/gateway-name=edge"
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
