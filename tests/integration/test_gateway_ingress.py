"""HTTPS ingress through a real Envoy gateway, end to end on 127.0.0.1.

A real `meshctl control-plane` with its CA; `meshctl gateway run` (identity
shop/ingress, its own Envoy) programmed by an Istio Gateway (HTTPS, SIMPLE,
credentialName from the agent's credentials directory) and a VirtualService
bound to it; the reviews service is a Python ASGI app under `serve_asgi`,
STRICT mTLS, with an AuthorizationPolicy that admits only the gateway.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from gateway_support import PrivateCa, running_gateway, wait_for_listener
from identities import (
    FRONTEND,
    NAMESPACE,
    REVIEWS_HOST,
    listening_socket,
    service_entry,
    serving_asgi,
    start_control_plane,
    workload_mesh,
)
from meshlab import LocalMesh

from proxyless_mesh.integrations._asgi import tls_peer_principal

pytestmark = pytest.mark.interop

INGRESS = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/ingress"
PUBLIC_HOST = "reviews.example.com"
CREDENTIAL = "reviews-cert"


def _docs(*docs: dict[str, Any]) -> str:
    return "\n---\n".join(json.dumps(doc) for doc in docs)


def _gateway_config() -> str:
    gateway = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "ingress", "namespace": NAMESPACE},
        "spec": {
            "selector": {"istio": "ingress"},
            "servers": [
                {
                    "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                    "hosts": [f"{NAMESPACE}/{PUBLIC_HOST}"],
                    "tls": {"mode": "SIMPLE", "credentialName": CREDENTIAL},
                },
                {
                    "port": {"number": 80, "name": "http", "protocol": "HTTP"},
                    "hosts": ["*/*.example.com"],
                    "tls": {"httpsRedirect": True},
                },
            ],
        },
    }
    route = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews-public", "namespace": NAMESPACE},
        "spec": {
            "hosts": [PUBLIC_HOST],
            "gateways": ["ingress"],
            "http": [{"route": [{"destination": {"host": REVIEWS_HOST}}]}],
        },
    }
    strict = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": NAMESPACE},
        "spec": {"mtls": {"mode": "STRICT"}},
    }
    only_gateway = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "reviews-from-ingress", "namespace": NAMESPACE},
        "spec": {
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": [INGRESS.removeprefix("spiffe://")]}}]}],
        },
    }
    return _docs(gateway, route, strict, only_gateway)


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    """Answers with the peer identity the mesh's inbound side verified."""
    if scope["type"] != "http":
        return
    body = (tls_peer_principal(scope) or "plaintext").encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Ingress:
    lab: LocalMesh
    ca: PrivateCa
    credentials: Path
    admin: str
    https_port: int
    http_port: int
    serial: int

    def client(self) -> httpx.Client:
        """A client outside the mesh that trusts only the gateway's private CA."""
        context = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        return httpx.Client(verify=context, timeout=15.0)

    def get(self, client: httpx.Client, path: str = "/reviews/1") -> httpx.Response:
        return client.get(
            f"https://127.0.0.1:{self.https_port}{path}",
            headers={"host": PUBLIC_HOST},
            extensions={"sni_hostname": PUBLIC_HOST},
        )


@pytest.fixture
def ingress(lab: LocalMesh, tmp_path: Path) -> Iterator[Ingress]:
    sock = listening_socket()
    lab.write_config("reviews.yaml", json.dumps(service_entry(REVIEWS_HOST, sock.getsockname()[1])))
    lab.write_config("ingress.yaml", _gateway_config())
    ca = PrivateCa.create("gateway test CA")
    credentials = tmp_path / "credentials"
    serial = ca.write_credential(credentials, CREDENTIAL, PUBLIC_HOST)
    start_control_plane(lab)
    reviews = workload_mesh(lab, "reviews-1", "reviews")
    with (
        reviews,
        serving_asgi(_echo, reviews, sock),
        running_gateway(lab, "ingress", NAMESPACE, credentials) as admin,
    ):
        https_port = wait_for_listener(admin, "0.0.0.0_443")
        http_port = wait_for_listener(admin, "0.0.0.0_80")
        yield Ingress(lab, ca, credentials, admin, https_port, http_port, serial)
    sock.close()


def _served_serial(ingress: Ingress) -> int:
    """The serial number of the certificate the gateway presents now."""
    context = ssl.create_default_context(cadata=ingress.ca.cert_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", ingress.https_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=PUBLIC_HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_https_ingress_reaches_a_strict_service_as_the_gateway(ingress: Ingress) -> None:
    with ingress.client() as client:
        deadline = time.monotonic() + 20
        while (response := ingress.get(client)).status_code != 200:
            assert time.monotonic() < deadline, (response.status_code, response.text)
            time.sleep(0.1)
        # The service saw the gateway's SPIFFE ID, verified by its STRICT mTLS,
        # and the policy admitting only that principal let it through.
        assert response.text == INGRESS
        assert _served_serial(ingress) == ingress.serial
        # Plain HTTP on the redirecting server is sent to https.
        redirect = client.get(
            f"http://127.0.0.1:{ingress.http_port}/x", headers={"host": PUBLIC_HOST}
        )
        assert redirect.status_code == 301
        assert redirect.headers["location"] == f"https://{PUBLIC_HOST}/x"
    # A client without the gateway's CA is refused by TLS itself.
    with (
        httpx.Client(timeout=5) as untrusting,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        ingress.get(untrusting)


def test_the_policy_refuses_a_meshed_client_with_another_identity(ingress: Ingress) -> None:
    frontend = workload_mesh(ingress.lab, "frontend-1", "frontend")
    with frontend, httpx.Client(transport=frontend.httpx_transport(), timeout=15) as client:
        assert frontend.identity == FRONTEND
        response = client.get(f"http://{REVIEWS_HOST}/reviews/1")
        assert response.status_code == 403, response.text


def test_a_replaced_credential_is_served_without_a_restart(ingress: Ingress) -> None:
    assert _served_serial(ingress) == ingress.serial
    renewed = ingress.ca.write_credential(ingress.credentials, CREDENTIAL, PUBLIC_HOST)
    deadline = time.monotonic() + 15
    while (served := _served_serial(ingress)) != renewed:
        assert time.monotonic() < deadline, (served, renewed)
        time.sleep(0.1)
    with ingress.client() as client:
        assert ingress.get(client).text == INGRESS
