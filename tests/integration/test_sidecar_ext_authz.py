"""AuthorizationPolicy CUSTOM on an Envoy sidecar (`meshctl proxy run`): the
control plane sends istiod's marking RBAC filter and ext_authz filter, Envoy
takes them (ACK) and asks the authorizer, registered as a mesh service, for
the requests the CUSTOM rule matches (and for no other): a plain HTTP server
(envoyExtAuthzHttp) or a gRPC envoy.service.auth.v3 server (envoyExtAuthzGrpc,
Envoy's envoy_grpc client over HTTP/2 to the provider's cluster)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from ext_authz_support import ASKED, running_authorizer, running_grpc_authorizer
from gateway_support import admin_get, running_proxy, wait_for_listener
from identities import NAMESPACE, service_entry, workload_mesh
from meshlab import LocalMesh
from processes import reserved_port
from test_sidecar_proxy import LEGACY_HOST, plain_app

pytestmark = pytest.mark.interop

AUTHZ_HOST = f"ext-authz.{NAMESPACE}.svc.cluster.local"


@pytest.fixture(params=["http", "grpc"])
def authorizer(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """(provider kind, port) of a running authorizer of that kind."""
    if request.param == "grpc":
        with running_grpc_authorizer() as port:
            yield "grpc", port
    else:
        with running_authorizer() as server:
            yield "http", server.server_address[1]


def _config(legacy_port: int, kind: str, authz_port: int) -> str:
    legacy = service_entry(LEGACY_HOST, legacy_port)
    legacy["metadata"]["name"] = "legacy"
    legacy["spec"]["endpoints"][0]["serviceAccount"] = "legacy"
    authz = service_entry(AUTHZ_HOST, authz_port)
    protocol = "GRPC" if kind == "grpc" else "HTTP"  # gRPC: Envoy speaks HTTP/2 to it
    authz["spec"]["ports"] = [{"number": 8000, "name": kind, "protocol": protocol}]
    authz["spec"]["endpoints"][0] = {"address": "127.0.0.1", "ports": {kind: authz_port}}
    settings: dict[str, Any] = {"service": AUTHZ_HOST, "port": 8000}
    if kind == "http":
        settings["includeRequestHeadersInCheck"] = ["x-ext-authz"]
    provider_type = "envoyExtAuthzGrpc" if kind == "grpc" else "envoyExtAuthzHttp"
    provider = {"name": "sample-ext-authz", provider_type: settings}
    docs: list[dict[str, Any]] = [
        legacy,
        authz,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": yaml.safe_dump({"extensionProviders": [provider]})},
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "ext-authz", "namespace": NAMESPACE},
            "spec": {
                "selector": {"matchLabels": {"app": "legacy"}},
                "action": "CUSTOM",
                "provider": {"name": "sample-ext-authz"},
                "rules": [{"to": [{"operation": {"paths": ["/headers"]}}]}],
            },
        },
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


def test_the_sidecar_asks_the_custom_provider(lab: LocalMesh, authorizer: tuple[str, int]) -> None:
    kind, authorizer_port = authorizer
    with reserved_port() as legacy_port, plain_app() as app_port:
        lab.write_config("mesh.yaml", _config(legacy_port, kind, authorizer_port))
        lab.start_control_plane(extra_args=["--leaf-ttl", "1h"])
        frontend = workload_mesh(lab, "frontend-1", "frontend")
        with (
            frontend,
            running_proxy(
                lab, "legacy", NAMESPACE, {legacy_port: app_port}, ("app=legacy",)
            ) as admin,
            httpx.Client(transport=frontend.httpx_transport(), timeout=15) as client,
        ):
            wait_for_listener(admin, f"inbound|{legacy_port}")
            deadline = time.monotonic() + 20
            while (response := client.get(f"http://{LEGACY_HOST}/hello")).status_code != 200:
                assert time.monotonic() < deadline, (response.status_code, response.text)
                time.sleep(0.1)
            ASKED.clear()
            allowed = client.get(f"http://{LEGACY_HOST}/headers", headers={"x-ext-authz": "allow"})
            assert allowed.status_code == 200, allowed.text
            denied = client.get(f"http://{LEGACY_HOST}/headers", headers={"x-ext-authz": "no"})
            reason = "denied by grpc ext_authz" if kind == "grpc" else "denied by ext_authz"
            assert (denied.status_code, denied.text) == (403, reason)
            # A path the CUSTOM rule does not name is not sent to the provider.
            assert client.get(f"http://{LEGACY_HOST}/hello").status_code == 200
            assert ASKED == ["/headers", "/headers"]
            status = json.loads(admin_get(lab.admin_address, "/status"))
            (sidecar,) = [c for c in status["clients"] if c["node_id"].startswith("sidecar~")]
            for name, record in sidecar["types"].items():
                assert record["acked"] and not record["nacked"], (name, record)
