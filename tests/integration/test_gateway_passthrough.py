"""TLS passthrough through a real Envoy gateway: a Gateway TLS server with
mode PASSTHROUGH and a VirtualService `tls` rule route by SNI to an HTTPS
server outside the mesh; TLS is end to end (the client verifies the server's
own certificate, the gateway never decrypts)."""

from __future__ import annotations

import json
import ssl
from typing import Any

import httpx
import pytest
from gateway_support import (
    API,
    PrivateCa,
    first_passthrough_get,
    https_server,
    running_gateway,
    wait_for_listener,
)
from meshlab import LocalMesh

pytestmark = pytest.mark.interop

NS = "default"


def _docs(api_port: int) -> list[dict[str, Any]]:
    def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        meta = {"name": name, "namespace": NS}
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": kind,
            "metadata": meta,
            "spec": spec,
        }

    server = {"number": 443, "name": "tls", "protocol": "TLS"}
    return [
        doc(
            "ServiceEntry",
            "api",
            {
                "hosts": [API],
                "location": "MESH_EXTERNAL",
                "resolution": "STATIC",
                "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                "endpoints": [{"address": "127.0.0.1", "ports": {"tls": api_port}}],
            },
        ),
        doc(
            "Gateway",
            "passthrough",
            {
                "selector": {"istio": "passthrough"},
                "servers": [{"port": server, "hosts": [API], "tls": {"mode": "PASSTHROUGH"}}],
            },
        ),
        doc(
            "VirtualService",
            "api-by-sni",
            {
                "hosts": [API],
                "gateways": ["passthrough"],
                "tls": [
                    {
                        "match": [{"sniHosts": [API]}],
                        "route": [{"destination": {"host": API, "port": {"number": 443}}}],
                    }
                ],
            },
        ),
    ]


def test_tls_is_passed_through_by_sni_to_the_external_server(lab: LocalMesh) -> None:
    ca = PrivateCa.create("external CA")
    with https_server(ca, API) as api_port:
        lab.write_config("passthrough.yaml", "\n---\n".join(json.dumps(d) for d in _docs(api_port)))
        lab.start_control_plane()
        with running_gateway(lab, "passthrough", NS) as admin:
            port = wait_for_listener(admin, "0.0.0.0_443")
            trusting = ssl.create_default_context(cadata=ca.cert_pem.decode())
            with httpx.Client(verify=trusting, timeout=10) as client:
                url = f"https://127.0.0.1:{port}/v1"
                response = first_passthrough_get(client, url, API)
                # The server's own certificate, verified by the client: not the gateway's.
                assert response.json() == {"sni": API, "client": None, "path": "/v1"}
                # A name no rule matches has no filter chain: the connection is closed.
                with pytest.raises(httpx.ConnectError):
                    client.get(url, extensions={"sni_hostname": "other.external.test"})
