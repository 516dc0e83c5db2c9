"""Istio's egress gateway with TLS origination, end to end on 127.0.0.1.

As in Istio's docs ("Egress gateways with TLS origination"): one
VirtualService bound to `mesh` and to the egress Gateway; its `mesh` match
sends a meshed client's plain http://api.external.test requests to the egress
gateway (mesh mTLS, the gateway's SPIFFE ID checked, SNI of the external host
from a DestinationRule), its gateway match sends them on from the gateway to
the external HTTPS server (its own CA) with TLS originated by the gateway's
Envoy. The gateway's server takes mesh mTLS only: plaintext is refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import API, PrivateCa, admin_get, https_server, running_gateway
from identities import NAMESPACE, workload_mesh
from meshlab import LocalMesh
from processes import reserved_port

pytestmark = pytest.mark.interop

EGRESS_HOST = f"egress.{NAMESPACE}.svc.cluster.local"
EGRESS = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/egress"


def _docs(port: int, gateway_port: int, origination: dict[str, Any]) -> list[dict[str, Any]]:
    def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        group = "networking.istio.io/v1"
        return {
            "apiVersion": group,
            "kind": kind,
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": spec,
        }

    http = {"name": "http", "protocol": "HTTP"}
    return [
        doc(
            "ServiceEntry",
            "api",
            {
                "hosts": [API],
                "location": "MESH_EXTERNAL",
                "resolution": "STATIC",
                "ports": [{"number": 80, **http}],
                "endpoints": [{"address": "127.0.0.1", "ports": {"http": port}}],
            },
        ),
        doc(
            "ServiceEntry",
            "egress",
            {
                "hosts": [EGRESS_HOST],
                "location": "MESH_INTERNAL",
                "resolution": "STATIC",
                "ports": [{"number": gateway_port, **http}],
                "endpoints": [
                    {
                        "address": "127.0.0.1",
                        "ports": {"http": gateway_port},
                        "serviceAccount": "egress",
                    }
                ],
            },
        ),
        doc(
            "Gateway",
            "egress",
            {
                "selector": {"istio": "egress"},
                "servers": [
                    {
                        "port": {"number": gateway_port, "name": "https", "protocol": "HTTPS"},
                        "hosts": [API],
                        "tls": {"mode": "ISTIO_MUTUAL"},
                    }
                ],
            },
        ),
        doc(
            "DestinationRule",
            "egress-for-api",
            {"host": EGRESS_HOST, "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL", "sni": API}}},
        ),
        doc(
            "VirtualService",
            "api-through-egress",
            {
                "hosts": [API],
                "gateways": ["mesh", "egress"],
                "http": [
                    {
                        "match": [{"gateways": ["mesh"], "port": 80}],
                        "route": [
                            {"destination": {"host": EGRESS_HOST, "port": {"number": gateway_port}}}
                        ],
                    },
                    {
                        "match": [{"gateways": ["egress"], "port": gateway_port}],
                        "route": [{"destination": {"host": API, "port": {"number": 80}}}],
                    },
                ],
            },
        ),
        doc(
            "DestinationRule",
            "originate-tls-for-api",
            {
                "host": API,
                "trafficPolicy": {"tls": {"mode": "SIMPLE", **origination}},
            },
        ),
    ]


@pytest.mark.parametrize("ca_from", ["file", "credentialName"])
def test_a_meshed_client_reaches_an_external_https_server_through_the_egress_gateway(
    lab: LocalMesh, tmp_path: Path, ca_from: str
) -> None:
    """The gateway checks the external server with the CA of a file named by
    the DestinationRule, or of a credentialName (`ca.crt` of the gateway's
    credential `api-ca`, served to its Envoy by SDS as Istio's egress does)."""
    ca = PrivateCa.create("external CA")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    credentials = tmp_path / "credentials"
    (credentials / "api-ca").mkdir(parents=True)
    (credentials / "api-ca" / "ca.crt").write_bytes(ca.cert_pem)
    origination = (
        {"caCertificates": str(tmp_path / "ca.pem")}
        if ca_from == "file"
        else {"credentialName": "api-ca"}
    )
    with https_server(ca, API) as api_port, reserved_port() as gateway_port:
        docs = _docs(api_port, gateway_port, origination)
        lab.write_config("egress.yaml", "\n---\n".join(json.dumps(d) for d in docs))
        lab.start_control_plane(extra_args=["--leaf-ttl", "1h"])
        frontend = workload_mesh(lab, "frontend-1", "frontend")
        with (
            running_gateway(lab, "egress", NAMESPACE, credentials, free_ports=False) as admin,
            frontend,
            httpx.Client(transport=frontend.httpx_transport(), timeout=15) as client,
        ):
            deadline = time.monotonic() + 20
            while (response := client.get(f"http://{API}/v1/items")).status_code != 200:
                assert time.monotonic() < deadline, (response.status_code, response.text)
                time.sleep(0.1)
            # Originated at the gateway: the external server saw TLS with its SNI.
            assert response.json() == {"sni": API, "client": None, "path": "/v1/items"}
            # It went through the gateway, and the client checked who the gateway is.
            stats = admin_get(admin, f"/stats?filter=http.gateway_{gateway_port}.downstream_rq_2xx")
            assert int(stats.rsplit(":", 1)[1]) >= 1, stats
            cluster = next(c for c in frontend.xds.state.clusters.values() if EGRESS_HOST in c.name)
            assert cluster.tls is not None and cluster.tls.expected_spiffe_ids == (EGRESS,)
            assert cluster.tls.sni == API
            # The gateway's server is mesh mTLS only: plaintext gets nothing.
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{gateway_port}/", headers={"host": API}, timeout=5)
