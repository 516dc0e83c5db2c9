"""AuthorizationPolicy CUSTOM on a sidecar's TCP port with a gRPC provider,
as Istio applies it: Envoy's network ext_authz asks the authorizer once per
connection (the marking network RBAC filter enabling it for the connections
a CUSTOM rule matches), with the peer's SPIFFE ID as the source principal.
The authorizer here admits shop/frontend only: a meshed client of that
identity gets the echo, one of another identity is closed."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
import yaml
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from gateway_support import admin_get, running_proxy, serving, wait_for_listener
from google.rpc import code_pb2
from identities import FRONTEND, NAMESPACE, workload_mesh
from meshlab import LocalMesh
from processes import reserved_port
from test_sidecar_tcp import ECHO, ECHO_HOST, _exchange, _Hello, _Server

from proxyless_mesh.security import verify_peer

pytestmark = pytest.mark.interop

AUTHZ_HOST = f"ext-authz.{NAMESPACE}.svc.cluster.local"


class _ByPrincipal(external_auth_pb2_grpc.AuthorizationServicer):
    """Admits FRONTEND; records every source principal it is asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def Check(self, request: Any, context: Any) -> Any:
        principal = request.attributes.source.principal
        self.asked.append(principal)
        response = external_auth_pb2.CheckResponse()
        if principal != FRONTEND:
            response.status.code = code_pb2.PERMISSION_DENIED
        return response


@pytest.fixture
def authorizer() -> Iterator[tuple[_ByPrincipal, int]]:
    servicer = _ByPrincipal()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(grace=None).wait(10)


def _entry(host: str, name: str, port: int, protocol: str, account: str) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"address": "127.0.0.1", "ports": {name: port}}
    if account:
        endpoint["serviceAccount"] = account
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": host.split(".")[0], "namespace": NAMESPACE},
        "spec": {
            "hosts": [host],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 9000 if account else 8000, "name": name, "protocol": protocol}],
            "endpoints": [endpoint],
        },
    }


def _config(echo_port: int, authz_port: int) -> str:
    provider = {"name": "by-principal", "envoyExtAuthzGrpc": {"service": AUTHZ_HOST, "port": 8000}}
    docs: list[dict[str, Any]] = [
        _entry(ECHO_HOST, "tcp", echo_port, "TCP", "tcp-echo"),
        _entry(AUTHZ_HOST, "grpc", authz_port, "GRPC", ""),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": yaml.safe_dump({"extensionProviders": [provider]})},
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
            "metadata": {"name": "custom", "namespace": NAMESPACE},
            "spec": {
                "selector": {"matchLabels": {"app": "tcp-echo"}},
                "action": "CUSTOM",
                "provider": {"name": "by-principal"},
                "rules": [{"from": [{"source": {"namespaces": [NAMESPACE]}}]}],
            },
        },
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


def test_the_grpc_provider_decides_each_tcp_connection(
    lab: LocalMesh, authorizer: tuple[_ByPrincipal, int]
) -> None:
    servicer, authz_port = authorizer
    with (
        reserved_port() as echo_port,
        serving(_Server(("127.0.0.1", 0), _Hello)) as app_port,
    ):
        lab.write_config("tcp.yaml", _config(echo_port, authz_port))
        lab.start_control_plane(extra_args=["--leaf-ttl", "1h"])
        with (
            workload_mesh(lab, "frontend-1", "frontend") as frontend,
            workload_mesh(lab, "sleep-1", "sleep") as sleep,
            running_proxy(
                lab, "tcp-echo", NAMESPACE, {echo_port: app_port}, ("app=tcp-echo",)
            ) as admin,
        ):
            wait_for_listener(admin, f"inbound|{echo_port}")
            answers = {}
            for name, mesh in (("frontend", frontend), ("sleep", sleep)):
                context = mesh.credentials().client_ssl_context(())
                with (
                    socket.create_connection(("127.0.0.1", echo_port), 5) as raw,
                    context.wrap_socket(raw, server_hostname=None) as tls,
                ):
                    verify_peer(tls, frozenset({ECHO}), peer="echo")
                    answers[name] = _exchange(tls, f"{name}\n".encode())
            stats = admin_get(admin, "/stats?filter=ext_authz")
    assert answers == {"frontend": b"hello frontend\n", "sleep": b""}, (answers, stats)
    sleep_id = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/sleep"
    assert servicer.asked == [FRONTEND, sleep_id]
