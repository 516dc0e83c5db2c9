"""HTTPS ingress through a real Envoy gateway, end to end on 127.0.0.1.

A real `meshctl control-plane` with its CA; `meshctl gateway run` (identity
shop/ingress, its own Envoy) programmed by an Istio Gateway (HTTPS, SIMPLE,
credentialName from the agent's credentials directory) and a VirtualService
bound to it; the reviews service is a Python ASGI app under `serve_asgi`,
STRICT mTLS, with an AuthorizationPolicy that admits only the gateway.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from gateway_support import PrivateCa, admin_get, running_gateway, wait_for_listener
from identities import (
    FRONTEND,
    NAMESPACE,
    REVIEWS_HOST,
    listening_socket,
    peer_echo,
    service_entry,
    serving_asgi,
    workload_mesh,
)
from meshlab import LocalMesh

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


@contextlib.contextmanager
def _ingress(lab: LocalMesh, tmp_path: Path, leaf_ttl: str) -> Iterator[Ingress]:
    sock = listening_socket()
    lab.write_config("reviews.yaml", json.dumps(service_entry(REVIEWS_HOST, sock.getsockname()[1])))
    lab.write_config("ingress.yaml", _gateway_config())
    ca = PrivateCa.create("gateway test CA")
    credentials = tmp_path / "credentials"
    serial = ca.write_credential(credentials, CREDENTIAL, PUBLIC_HOST)
    lab.start_control_plane(extra_args=["--leaf-ttl", leaf_ttl])
    reviews = workload_mesh(lab, "reviews-1", "reviews")
    with (
        reviews,
        serving_asgi(peer_echo, reviews, sock),
        running_gateway(lab, "ingress", NAMESPACE, credentials) as admin,
    ):
        https_port = wait_for_listener(admin, "0.0.0.0_443")
        http_port = wait_for_listener(admin, "0.0.0.0_80")
        yield Ingress(lab, ca, credentials, admin, https_port, http_port, serial)
    sock.close()


@pytest.fixture
def ingress(lab: LocalMesh, tmp_path: Path) -> Iterator[Ingress]:
    """Hour-long workload certificates: none rotates during the test."""
    with _ingress(lab, tmp_path, "1h") as running:
        yield running


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
    # The gateway's Envoy accepted everything it was sent (ACK, never NACK).
    status = json.loads(admin_get(ingress.lab.admin_address, "/status"))
    (gateway,) = [c for c in status["clients"] if c["node_id"].startswith("router~")]
    assert len(gateway["types"]) == 4, gateway["types"]
    for name, record in gateway["types"].items():
        assert record["acked"] and not record["nacked"], (name, record)
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


RATE = 200  # requests per second, over WORKERS keep-alive clients
WORKERS = 4
RUN = 6.0  # seconds: with 6 s certificates the gateway's renews at least once
FRESH_CONNECTION_EVERY = 10  # every 10th request closes its connection: new handshakes


def _workload_serials(admin: str) -> set[str]:
    """Serial numbers of the certificates Envoy holds for the gateway's identity."""
    certs = json.loads(admin_get(admin, "/certs"))
    return {
        cert["serial_number"]
        for context in certs.get("certificates", [])
        for cert in context.get("cert_chain", [])
        if any(san.get("uri") == INGRESS for san in cert.get("subject_alt_names", []))
    }


def _load(ingress: Ingress, deadline: float, outcomes: list[object]) -> None:
    """RATE / WORKERS requests a second until `deadline`, paced by the clock."""
    interval, sent = WORKERS / RATE, 0
    start = time.monotonic()
    with ingress.client() as client:
        while (now := time.monotonic()) < deadline:
            time.sleep(max(0.0, start + sent * interval - now))
            sent += 1
            close = {"connection": "close"} if sent % FRESH_CONNECTION_EVERY == 0 else {}
            try:
                response = client.get(
                    f"https://127.0.0.1:{ingress.https_port}/r",
                    headers={"host": PUBLIC_HOST, **close},
                    extensions={"sni_hostname": PUBLIC_HOST},
                )
                outcomes.append(response.status_code if response.text == INGRESS else response)
            except httpx.HTTPError as exc:
                outcomes.append(exc)


def test_gateway_certificates_rotate_under_load_without_losing_a_request(
    lab: LocalMesh, tmp_path: Path
) -> None:
    with _ingress(lab, tmp_path, "6s") as ingress:
        with ingress.client() as client:
            deadline = time.monotonic() + 20
            while ingress.get(client).status_code != 200:
                assert time.monotonic() < deadline, "no route through the gateway"
                time.sleep(0.1)
        workload_before = _workload_serials(ingress.admin)
        outcomes: list[object] = []
        end = time.monotonic() + RUN
        workers = [
            threading.Thread(target=_load, args=(ingress, end, outcomes)) for _ in range(WORKERS)
        ]
        for worker in workers:
            worker.start()
        renewed = []
        for at in (RUN / 3, 2 * RUN / 3):  # the HTTPS certificate replaced twice
            time.sleep(max(0.0, end - RUN + at - time.monotonic()))
            renewed.append(
                ingress.ca.write_credential(ingress.credentials, CREDENTIAL, PUBLIC_HOST)
            )
        for worker in workers:
            worker.join(RUN + 30)
        workload_after = _workload_serials(ingress.admin)
        served = _served_serial(ingress)
    failures = [outcome for outcome in outcomes if outcome != 200]
    assert not failures, failures[:5]
    assert len(outcomes) >= 0.8 * RATE * RUN, f"only {len(outcomes)} requests sent"
    assert workload_before and workload_after and workload_before != workload_after
    assert served == renewed[-1]
