"""A server on a port nothing declares still enforces the workload's policy.

A real `meshctl control-plane` with its CA; no ServiceEntry or WorkloadEntry
names the reviews workload's port (as for a workload running under an
unexpected service account). A namespace-wide STRICT PeerAuthentication and an
AuthorizationPolicy selecting the workload by its labels must hold there, as
Istio's inbound passthrough chain applies them: plaintext is refused, mTLS
callers are authorized. A policy selecting other labels must not apply.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from identities import (
    FRONTEND,
    NAMESPACE,
    REVIEWS,
    listening_socket,
    serving_asgi,
    start_control_plane,
    workload_mesh,
)
from meshlab import LocalMesh

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.integrations._asgi import tls_peer_principal
from proxyless_mesh.integrations._tls_transport import TlsTransports
from proxyless_mesh.model import INBOUND_PASSTHROUGH, TlsMode, UpstreamTls

CONFIG = [
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": NAMESPACE},
        "spec": {"mtls": {"mode": "STRICT"}},
    },
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "reviews-deny-admin", "namespace": NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"app": "reviews"}},
            "action": "DENY",
            "rules": [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}],
        },
    },
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "ratings-deny-all", "namespace": NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"app": "ratings"}},
            "action": "DENY",
            "rules": [{}],
        },
    },
]


async def _echo(scope: dict[str, object], receive: object, send: object) -> None:
    if scope["type"] != "http":
        return
    body = (tls_peer_principal(scope) or "plaintext").encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


@pytest.fixture
def plane(lab: LocalMesh) -> Iterator[LocalMesh]:
    lab.write_config("security.yaml", "\n---\n".join(json.dumps(d) for d in CONFIG))
    start_control_plane(lab)
    yield lab


def _labelled(lab: LocalMesh, node: str, sa: str, labels: dict[str, str]) -> Mesh:
    token = lab.token(NAMESPACE, sa)
    path = lab.bootstrap(node, NAMESPACE, sa, token=token, labels=labels)
    return Mesh(Bootstrap.from_file(path))


def test_undeclared_port_is_strict_and_authorized(plane: LocalMesh) -> None:
    reviews = _labelled(plane, "reviews-1", "reviews", {"app": "reviews"})
    frontend = workload_mesh(plane, "frontend-1", "frontend")
    sock = listening_socket()
    port = sock.getsockname()[1]
    with reviews, frontend, serving_asgi(_echo, reviews, sock):
        transport = TlsTransports(frontend).for_cluster(UpstreamTls((REVIEWS,)))
        assert transport is not None
        with httpx.Client(transport=transport, timeout=30.0) as client:
            # The first mTLS request also proves serve_asgi has followed the port.
            response = client.get(f"http://127.0.0.1:{port}/api/1")
            assert (response.status_code, response.text) == (200, FRONTEND)
            assert client.get(f"http://127.0.0.1:{port}/admin/x").status_code == 403
        # The port has no listener of its own: the passthrough's mode applies.
        name = reviews.inbound_listener_name(port, "127.0.0.1")
        assert name in reviews.snapshot.absent
        listener = reviews.inbound_listener(port)
        assert listener is not None and listener.name == INBOUND_PASSTHROUGH
        assert reviews.inbound_tls_mode(port) is TlsMode.STRICT
        refused = httpx.get(f"http://127.0.0.1:{port}/api/1", timeout=30.0)
        assert refused.status_code == 426 and "mutual TLS required" in refused.text
    sock.close()
