"""What the operator writes reaches the server side, end to end, on 127.0.0.1.

A real `meshctl control-plane` with its CA; a ServiceEntry declares the
`reviews` workload (endpoints with `serviceAccount`, so auto mTLS is on and
the control plane sends that workload its server listener). The reviews
server is an ASGI app under `serve_asgi` (its own Mesh, identity reviews) or
a WSGI app under gunicorn with `MeshSyncWorker` (a real process); clients are
Meshes with join tokens for other identities, calling through
`mesh.httpx_transport()`. AuthorizationPolicy and PeerAuthentication YAML
written to the config dir change the server's decisions without a restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from identities import (
    FRONTEND,
    RATINGS,
    REVIEWS,
    REVIEWS_HOST,
    listening_socket,
    service_entry,
    serving_asgi,
    start_control_plane,
    workload_bootstrap,
    workload_mesh,
)
from meshlab import LocalMesh
from processes import stop

from proxyless_mesh import Mesh
from proxyless_mesh.integrations._asgi import tls_peer_principal
from proxyless_mesh.model import TlsMode

HOST = REVIEWS_HOST
WSGI_HOST = "reviews-wsgi.shop.svc.cluster.local"
BIN = Path(sys.executable).parent


def _policies(allowed: list[str]) -> str:
    allow = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "reviews-allow", "namespace": "shop"},
        "spec": {
            "action": "ALLOW",
            "rules": [
                {
                    "from": [{"source": {"principals": allowed}}],
                    "to": [{"operation": {"paths": ["/api", "/api/*"]}}],
                }
            ],
        },
    }
    deny = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "reviews-deny-admin", "namespace": "shop"},
        "spec": {
            "action": "DENY",
            "rules": [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}],
        },
    }
    return json.dumps(allow) + "\n---\n" + json.dumps(deny)


def _peer_authentication(mode: str) -> str:
    return json.dumps(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "shop"},
            "spec": {"mtls": {"mode": mode}},
        }
    )


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """The xDS update reaches the server mesh on its own thread; there is no
    public event for "this listener changed", so poll it, bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Lab:
    lab: LocalMesh
    asgi_port: int
    asgi_sock: socket.socket
    wsgi_sock: socket.socket

    def mesh(self, node: str, sa: str) -> Mesh:
        return workload_mesh(self.lab, node, sa)


@pytest.fixture
def mesh_lab(lab: LocalMesh) -> Iterator[Lab]:
    asgi_sock, wsgi_sock = listening_socket(), listening_socket()
    lab.write_config(
        "services.yaml",
        json.dumps(service_entry(HOST, asgi_sock.getsockname()[1]))
        + "\n---\n"
        + json.dumps(service_entry(WSGI_HOST, wsgi_sock.getsockname()[1])),
    )
    start_control_plane(lab)
    try:
        yield Lab(lab, asgi_sock.getsockname()[1], asgi_sock, wsgi_sock)
    finally:
        asgi_sock.close()
        wsgi_sock.close()


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    """Answers with the peer identity it was given (what the middleware read)."""
    if scope["type"] != "http":
        return
    body = (tls_peer_principal(scope) or "plaintext").encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _client(mesh: Mesh) -> httpx.Client:
    return httpx.Client(transport=mesh.httpx_transport(), timeout=30.0)


def test_asgi_mtls_and_policy_from_the_config_dir(mesh_lab: Lab) -> None:
    mesh_lab.lab.write_config("policies.yaml", _policies(["cluster.local/ns/shop/sa/frontend"]))
    reviews = mesh_lab.mesh("reviews-1", "reviews")
    frontend = mesh_lab.mesh("frontend-1", "frontend")
    ratings = mesh_lab.mesh("ratings-1", "ratings")
    port = mesh_lab.asgi_port
    with reviews, frontend, ratings, serving_asgi(_echo, reviews, mesh_lab.asgi_sock):
        with _client(frontend) as client:
            # a) mTLS both ways: the app saw the frontend's SPIFFE ID, and the
            #    client's transport checked the server's against the cluster's.
            response = client.get(f"http://{HOST}/api/1")
            assert response.status_code == 200 and response.text == FRONTEND
            cluster = next(c for c in frontend.xds.state.clusters.values() if HOST in c.name)
            assert cluster.tls is not None and cluster.tls.expected_spiffe_ids == (REVIEWS,)
            # b) the policy the operator wrote: allowed path, denied path.
            assert client.get(f"http://{HOST}/admin").status_code == 403
            assert client.get(f"http://{HOST}/other").status_code == 403
        with _client(ratings) as other:
            assert other.get(f"http://{HOST}/api/1").status_code == 403
            # The policy changes: the running server follows it.
            before = reviews.inbound_listener(port)
            mesh_lab.lab.write_config(
                "policies.yaml",
                _policies(
                    ["cluster.local/ns/shop/sa/frontend", "cluster.local/ns/shop/sa/ratings"]
                ),
            )
            _wait_for(lambda: reviews.inbound_listener(port) != before, "the new policy")
            response = other.get(f"http://{HOST}/api/1")
            assert response.status_code == 200 and response.text == RATINGS
            assert other.get(f"http://{HOST}/admin").status_code == 403


def test_peer_authentication_from_the_config_dir(mesh_lab: Lab) -> None:
    mesh_lab.lab.write_config("peer.yaml", _peer_authentication("STRICT"))
    reviews = mesh_lab.mesh("reviews-1", "reviews")
    frontend = mesh_lab.mesh("frontend-1", "frontend")
    port = mesh_lab.asgi_port
    plain_url = f"http://127.0.0.1:{port}/api"
    with reviews, frontend, serving_asgi(_echo, reviews, mesh_lab.asgi_sock):
        # No AuthorizationPolicy: only the mode decides.
        with _client(frontend) as client:
            assert client.get(f"http://{HOST}/api").text == FRONTEND
        assert reviews.inbound_tls_mode(port) is TlsMode.STRICT
        refused = httpx.get(plain_url, timeout=30.0)
        assert refused.status_code == 426 and "mutual TLS required" in refused.text
        mesh_lab.lab.write_config("peer.yaml", _peer_authentication("PERMISSIVE"))
        _wait_for(lambda: reviews.inbound_tls_mode(port) is TlsMode.PERMISSIVE, "PERMISSIVE")
        served = httpx.get(plain_url, timeout=30.0)
        assert served.status_code == 200 and served.text == "plaintext"
        with _client(frontend) as client:  # and mTLS still, on the same port
            assert client.get(f"http://{HOST}/api").text == FRONTEND


WSGI_APP = """
from proxyless_mesh.integrations._wsgi import PEER_PRINCIPAL_KEY


def app(environ, start_response):
    body = (environ.get(PEER_PRINCIPAL_KEY) or "plaintext").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


@contextlib.contextmanager
def _gunicorn(mesh_lab: Lab) -> Iterator[subprocess.Popen[bytes]]:
    workdir = mesh_lab.lab.workdir
    (workdir / "wsgi_app.py").write_text(WSGI_APP)
    bootstrap = workload_bootstrap(mesh_lab.lab, "reviews-wsgi", "reviews")
    fd = mesh_lab.wsgi_sock.fileno()
    env = dict(os.environ, GRPC_XDS_BOOTSTRAP=str(bootstrap))
    env.pop("GRPC_XDS_BOOTSTRAP_CONFIG", None)
    with open(workdir / "gunicorn.log", "wb") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "-k",
                "proxyless_mesh.gunicorn.MeshSyncWorker",
                "--bind",
                f"fd://{fd}",
                "--workers",
                "1",
                "--chdir",
                str(workdir),
                "wsgi_app:app",
            ],
            pass_fds=(fd,),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        stop(proc)


def test_wsgi_under_gunicorn_enforces_the_same_policy(mesh_lab: Lab) -> None:
    mesh_lab.lab.write_config("policies.yaml", _policies(["cluster.local/ns/shop/sa/frontend"]))
    frontend = mesh_lab.mesh("frontend-1", "frontend")
    ratings = mesh_lab.mesh("ratings-1", "ratings")
    with _gunicorn(mesh_lab) as proc, frontend, ratings:
        with _client(frontend) as client:
            # The first request waits in the backlog until the worker's mesh started.
            response = client.get(f"http://{WSGI_HOST}/api/1")
            assert response.status_code == 200 and response.text == FRONTEND
            assert client.get(f"http://{WSGI_HOST}/admin").status_code == 403
        with _client(ratings) as other:
            assert other.get(f"http://{WSGI_HOST}/api/1").status_code == 403
        # PERMISSIVE (the default): plaintext reaches the server, and the
        # policy refuses it (no principal), as a sidecar would.
        port = mesh_lab.wsgi_sock.getsockname()[1]
        assert httpx.get(f"http://127.0.0.1:{port}/api/1", timeout=30).status_code == 403
        assert proc.poll() is None
