"""AuthorizationPolicy CUSTOM end to end on 127.0.0.1: a real `meshctl
control-plane` reads the mesh config (ConfigMap istio) and the policy from
its config dir; the reviews server is an ASGI app under `serve_asgi` (its own
Mesh); the external authorizer is a plain HTTP server registered as a mesh
service (a ServiceEntry), reached by the server through its mesh; the client
is a Mesh with another identity."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import yaml
from ext_authz_support import ASKED, running_authorizer, running_grpc_authorizer
from identities import (
    REVIEWS_HOST,
    listening_socket,
    service_entry,
    serving_asgi,
    start_control_plane,
    workload_mesh,
)
from meshlab import LocalMesh
from test_inbound_from_xds import WSGI_HOST, Lab, _gunicorn

AUTHZ_HOST = "ext-authz.shop.svc.cluster.local"


@pytest.fixture
def authorizer() -> Iterator[ThreadingHTTPServer]:
    with running_authorizer() as server:
        yield server


def _config(authz_port: int, reviews_port: int, wsgi_port: int = 0, grpc_port: int = 0) -> str:
    authz = service_entry(AUTHZ_HOST, authz_port)
    authz["spec"]["ports"] = [
        {"number": 8000, "name": "http", "protocol": "HTTP"},
        {"number": 9000, "name": "grpc", "protocol": "GRPC"},
    ]
    del authz["spec"]["endpoints"][0]["serviceAccount"]  # a plaintext, unmeshed authorizer
    authz["spec"]["endpoints"][0]["ports"] = {"http": authz_port, "grpc": grpc_port or 1}
    provider: dict[str, Any] = {
        "name": "sample-ext-authz-http",
        "envoyExtAuthzHttp": {
            "service": AUTHZ_HOST,
            "port": "8000",
            "includeRequestHeadersInCheck": ["x-ext-authz"],
            "headersToUpstreamOnAllow": ["x-ext-authz-check-result"],
            "headersToDownstreamOnDeny": ["x-ext-authz-check-result"],
        },
    }
    if grpc_port:
        provider = {
            "name": "sample-ext-authz-http",  # the policy's provider, now over gRPC
            "envoyExtAuthzGrpc": {"service": AUTHZ_HOST, "port": 9000},
        }
    mesh_config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": yaml.safe_dump({"extensionProviders": [provider]})},
    }
    policy = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "ext-authz", "namespace": "shop"},
        "spec": {
            "action": "CUSTOM",
            "provider": {"name": "sample-ext-authz-http"},
            "rules": [{"to": [{"operation": {"paths": ["/headers"]}}]}],
        },
    }
    docs = [service_entry(REVIEWS_HOST, reviews_port), authz, mesh_config, policy]
    if wsgi_port:
        docs.append(service_entry(WSGI_HOST, wsgi_port))
    return "\n---\n".join(json.dumps(d) for d in docs)


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(headers).encode()})


def test_custom_policy_through_the_mesh(lab: LocalMesh, authorizer: ThreadingHTTPServer) -> None:
    sock = listening_socket()
    try:
        lab.write_config("mesh.yaml", _config(authorizer.server_address[1], sock.getsockname()[1]))
        start_control_plane(lab)
        reviews = workload_mesh(lab, "reviews-1", "reviews")
        frontend = workload_mesh(lab, "frontend-1", "frontend")
        client = httpx.Client(transport=frontend.httpx_transport(), timeout=30.0)
        with reviews, frontend, serving_asgi(_echo, reviews, sock), client:
            ASKED.clear()
            allowed = client.get(f"http://{REVIEWS_HOST}/headers", headers={"x-ext-authz": "allow"})
            assert allowed.status_code == 200, allowed.text
            assert allowed.json()["x-ext-authz-check-result"] == "allowed"
            assert ASKED == ["/headers"]
            denied = client.get(f"http://{REVIEWS_HOST}/headers", headers={"x-ext-authz": "no"})
            assert (denied.status_code, denied.text) == (403, "denied by ext_authz")
            assert denied.headers["x-ext-authz-check-result"] == "denied"
            assert client.get(f"http://{REVIEWS_HOST}/ip").status_code == 200
            assert len(ASKED) == 2  # /ip matched no CUSTOM rule: not asked
            authorizer.shutdown()
            authorizer.server_close()  # the authorizer is down: fail closed
            down = client.get(f"http://{REVIEWS_HOST}/headers", headers={"x-ext-authz": "allow"})
            assert down.status_code == 403
    finally:
        sock.close()


def test_custom_policy_under_gunicorn(lab: LocalMesh, authorizer: ThreadingHTTPServer) -> None:
    """The same through a WSGI app in a real gunicorn process (MeshSyncWorker)."""
    asgi_sock, wsgi_sock = listening_socket(), listening_socket()
    try:
        ports = (asgi_sock.getsockname()[1], wsgi_sock.getsockname()[1])
        lab.write_config("mesh.yaml", _config(authorizer.server_address[1], *ports))
        start_control_plane(lab)
        frontend = workload_mesh(lab, "frontend-1", "frontend")
        client = httpx.Client(transport=frontend.httpx_transport(), timeout=30.0)
        with _gunicorn(Lab(lab, ports[0], asgi_sock, wsgi_sock)) as proc, frontend, client:
            ASKED.clear()
            allowed = client.get(f"http://{WSGI_HOST}/headers", headers={"x-ext-authz": "allow"})
            assert allowed.status_code == 200, allowed.text
            denied = client.get(f"http://{WSGI_HOST}/headers", headers={"x-ext-authz": "no"})
            assert (denied.status_code, denied.text) == (403, "denied by ext_authz")
            assert denied.headers["x-ext-authz-check-result"] == "denied"
            assert ASKED == ["/headers", "/headers"]
            assert proc.poll() is None
    finally:
        asgi_sock.close()
        wsgi_sock.close()


def test_grpc_provider_through_the_mesh(lab: LocalMesh) -> None:
    sock = listening_socket()
    try:
        with running_grpc_authorizer() as grpc_port:
            lab.write_config("mesh.yaml", _config(1, sock.getsockname()[1], grpc_port=grpc_port))
            start_control_plane(lab)
            reviews = workload_mesh(lab, "reviews-1", "reviews")
            frontend = workload_mesh(lab, "frontend-1", "frontend")
            client = httpx.Client(transport=frontend.httpx_transport(), timeout=30.0)
            with reviews, frontend, serving_asgi(_echo, reviews, sock), client:
                ASKED.clear()
                url = f"http://{REVIEWS_HOST}/headers?q=1"
                allowed = client.get(url, headers={"x-ext-authz": "allow"})
                assert allowed.status_code == 200, allowed.text
                assert allowed.json()["x-ext-authz-check-result"] == "allowed"
                denied = client.get(url, headers={"x-ext-authz": "no"})
                assert (denied.status_code, denied.text) == (403, "denied by grpc ext_authz")
                assert ASKED == ["/headers?q=1", "/headers?q=1"]
    finally:
        sock.close()
