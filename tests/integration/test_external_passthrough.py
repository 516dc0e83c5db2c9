"""Istio's external-service shape: a ServiceEntry with no resolution (Istio's
default NONE) and no endpoints. The request must reach the host itself, as it
does in Istio, not an empty cluster."""

from __future__ import annotations

import json

import httpx
from meshlab import LocalMesh

from proxyless_mesh import Mesh


def test_a_declared_external_host_is_reached_by_name(lab: LocalMesh) -> None:
    backend = lab.start_http_backend("external", "v1")
    port = backend.ready["port"]
    entry = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "external", "namespace": "default"},
        "spec": {"hosts": ["localhost"], "ports": [{"number": port, "name": "http"}]},
    }
    lab.write_config("external.yaml", json.dumps(entry))
    lab.start_control_plane()
    with (
        Mesh.from_bootstrap(lab.bootstrap("egress-client")) as mesh,
        httpx.Client(transport=mesh.httpx_transport(), timeout=10) as client,
    ):
        response = client.get(f"http://localhost:{port}/")
    assert response.status_code == 200
    assert response.json()["version"] == "v1"
