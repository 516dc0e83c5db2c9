"""TCP through `meshctl proxy run` sidecars, end to end on 127.0.0.1.

A plain TCP echo server (a stand-in for a workload in any language) serves
a declared TCP port behind its sidecar (identity shop/tcp-echo), STRICT mTLS,
an AuthorizationPolicy admitting shop/sleep by principal (and shop/frontend
only by an HTTP method, which TCP traffic cannot match). Another stand-in,
shop/sleep, dials its own sidecar's outbound TCP listener in plaintext; the
two sidecars speak mesh mTLS between them."""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import time
from collections.abc import Iterator
from typing import Any

import pytest
from gateway_support import admin_get, running_proxy, serving, wait_for_listener
from identities import FRONTEND, NAMESPACE, workload_mesh
from meshlab import LocalMesh
from processes import reserved_port

from proxyless_mesh.security import verify_peer

pytestmark = pytest.mark.interop

ECHO_HOST = f"echo.{NAMESPACE}.svc.cluster.local"
ECHO = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/tcp-echo"
SLEEP = f"cluster.local/ns/{NAMESPACE}/sa/sleep"


class _Hello(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"hello " + self.rfile.readline())


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _config(echo_port: int) -> str:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "echo", "namespace": NAMESPACE},
            "spec": {
                "hosts": [ECHO_HOST],
                "location": "MESH_INTERNAL",
                "resolution": "STATIC",
                "ports": [{"number": 9000, "name": "tcp", "protocol": "TCP"}],
                "endpoints": [
                    {
                        "address": "127.0.0.1",
                        "ports": {"tcp": echo_port},
                        "serviceAccount": "tcp-echo",
                    }
                ],
            },
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": NAMESPACE},
            "spec": {"mtls": {"mode": "STRICT"}},
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "echo", "namespace": NAMESPACE},
            "spec": {
                "selector": {"matchLabels": {"app": "tcp-echo"}},
                "action": "ALLOW",
                "rules": [
                    {"from": [{"source": {"principals": [SLEEP]}}]},
                    {
                        "from": [{"source": {"principals": [FRONTEND[len("spiffe://") :]]}}],
                        "to": [{"operation": {"methods": ["GET"]}}],
                    },
                ],
            },
        },
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


def _exchange(sock: socket.socket, line: bytes) -> bytes:
    """Send a line; what comes back before the peer closes or 5 s pass."""
    sock.settimeout(5)
    sock.sendall(line)
    received = b""
    with contextlib.suppress(ConnectionError, TimeoutError):
        while not received.endswith(b"\n") and (chunk := sock.recv(1024)):
            received += chunk
    return received


@contextlib.contextmanager
def echo_and_sleep(lab: LocalMesh) -> Iterator[tuple[int, str, str]]:
    """The control plane and both sidecars (agents `tcp-echo` and `sleep`):
    (the echo's declared port, echo's Envoy admin, sleep's)."""
    with (
        reserved_port() as echo_port,
        serving(_Server(("127.0.0.1", 0), _Hello)) as app_port,
    ):
        lab.write_config("tcp.yaml", _config(echo_port))
        lab.start_control_plane(extra_args=["--leaf-ttl", "1h"])
        with (
            running_proxy(
                lab, "tcp-echo", NAMESPACE, {echo_port: app_port}, ("app=tcp-echo",)
            ) as echo_admin,
            running_proxy(
                lab, "sleep", NAMESPACE, {}, ("app=sleep",), (f"{ECHO_HOST}:9000=0",)
            ) as sleep_admin,
        ):
            wait_for_listener(echo_admin, f"inbound|{echo_port}")
            yield echo_port, echo_admin, sleep_admin


@pytest.fixture
def sidecars(lab: LocalMesh) -> Iterator[tuple[int, int, Any, str]]:
    """(the echo's declared port, sleep's local outbound port, a meshed
    frontend, the echo sidecar's Envoy admin)."""
    with (
        echo_and_sleep(lab) as (echo_port, echo_admin, sleep_admin),
        workload_mesh(lab, "frontend-1", "frontend") as frontend,
    ):
        local = wait_for_listener(sleep_admin, f"outbound|9000||{ECHO_HOST}")
        yield echo_port, local, frontend, echo_admin


def test_tcp_goes_through_both_sidecars_in_mesh_mtls(
    sidecars: tuple[int, int, Any, str],
) -> None:
    echo_port, local, frontend, admin = sidecars
    deadline = time.monotonic() + 20
    while True:  # the outbound cluster's endpoints may follow the listener
        with socket.create_connection(("127.0.0.1", local), timeout=5) as sock:
            if (answer := _exchange(sock, b"world\n")) == b"hello world\n":
                break
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)
    # STRICT: plaintext straight to the echo's sidecar gets a TLS alert, no echo.
    with socket.create_connection(("127.0.0.1", echo_port), timeout=5) as sock:
        refused = _exchange(sock, b"plain\n")
        assert b"hello" not in refused and refused[:1] in (b"", b"\x15"), refused
    # A meshed client with an identity the TCP part of the policy does not
    # admit (its rule needs an HTTP method): the sidecar is who the mesh says
    # (shop/tcp-echo), and its network RBAC closes the connection.
    context = frontend.credentials().client_ssl_context(())
    with (
        socket.create_connection(("127.0.0.1", echo_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=None) as tls,
    ):
        verify_peer(tls, frozenset({ECHO}), peer="echo")
        assert _exchange(tls, b"frontend\n") == b""
    stats = dict(
        line.split(": ", 1) for line in admin_get(admin, "/stats").splitlines() if ": " in line
    )
    # Refused by the RBAC network filter (not the handshake): one denial, the
    # frontend's; sleep's connection was allowed by principal.
    assert stats["tcp.allow.rbac.denied"] == "1"
    assert int(stats["tcp.allow.rbac.allowed"]) >= 1
