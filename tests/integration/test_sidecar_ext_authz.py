"""AuthorizationPolicy CUSTOM on an Envoy sidecar (`meshctl proxy run`): the
control plane sends istiod's marking RBAC filter and ext_authz filter, Envoy
takes them (ACK) and asks the authorizer, a plain HTTP server registered as a
mesh service, for the requests the CUSTOM rule matches."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from ext_authz_support import running_authorizer
from gateway_support import admin_get, running_proxy, wait_for_listener
from identities import NAMESPACE, service_entry, workload_mesh
from meshlab import LocalMesh
from processes import reserved_port
from test_sidecar_proxy import LEGACY_HOST, plain_app

pytestmark = pytest.mark.interop

AUTHZ_HOST = f"ext-authz.{NAMESPACE}.svc.cluster.local"


@pytest.fixture
def authorizer_port() -> Iterator[int]:
    with running_authorizer() as server:
        yield server.server_address[1]


def _config(legacy_port: int, authz_port: int) -> str:
    legacy = service_entry(LEGACY_HOST, legacy_port)
    legacy["metadata"]["name"] = "legacy"
    legacy["spec"]["endpoints"][0]["serviceAccount"] = "legacy"
    authz = service_entry(AUTHZ_HOST, authz_port)
    authz["spec"]["ports"] = [{"number": 8000, "name": "http", "protocol": "HTTP"}]
    authz["spec"]["endpoints"][0] = {"address": "127.0.0.1", "ports": {"http": authz_port}}
    provider = {
        "name": "sample-ext-authz-http",
        "envoyExtAuthzHttp": {
            "service": AUTHZ_HOST,
            "port": 8000,
            "includeRequestHeadersInCheck": ["x-ext-authz"],
        },
    }
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
                "provider": {"name": "sample-ext-authz-http"},
                "rules": [{"to": [{"operation": {"paths": ["/headers"]}}]}],
            },
        },
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


def test_the_sidecar_asks_the_custom_provider(lab: LocalMesh, authorizer_port: int) -> None:
    with reserved_port() as legacy_port, plain_app() as app_port:
        lab.write_config("mesh.yaml", _config(legacy_port, authorizer_port))
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
            allowed = client.get(f"http://{LEGACY_HOST}/headers", headers={"x-ext-authz": "allow"})
            assert allowed.status_code == 200, allowed.text
            denied = client.get(f"http://{LEGACY_HOST}/headers", headers={"x-ext-authz": "no"})
            assert (denied.status_code, denied.text) == (403, "denied by ext_authz")
            status = json.loads(admin_get(lab.admin_address, "/status"))
            (sidecar,) = [c for c in status["clients"] if c["node_id"].startswith("sidecar~")]
            for name, record in sidecar["types"].items():
                assert record["acked"] and not record["nacked"], (name, record)
