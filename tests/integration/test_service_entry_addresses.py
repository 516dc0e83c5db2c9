"""ServiceEntry `addresses`: a virtual IP names the service for HTTP clients
(Istio puts it in the route domains). Through an Envoy sidecar (`meshctl proxy
run`) a request whose Host is the VIP, an address nothing listens on, reaches
the service's endpoint, as one naming the host does."""

from __future__ import annotations

import json

import httpx
import pytest
from gateway_support import listener_ports, running_proxy, wait_for_listener
from meshlab import LocalMesh

pytestmark = pytest.mark.interop

VIP = "240.240.0.5"  # reserved (class E): nothing answers there, only the mesh can route it


def test_a_virtual_ip_names_the_service_for_envoy(lab: LocalMesh) -> None:
    backend = lab.start_http_backend("ratings", "v1")
    entry = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "ratings", "namespace": "default"},
        "spec": {
            "hosts": ["ratings.external.test"],
            "addresses": [VIP],
            "location": "MESH_EXTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
            "endpoints": [{"address": "127.0.0.1", "ports": {"http": backend.ready["port"]}}],
        },
    }
    lab.write_config("ratings.yaml", json.dumps(entry))
    lab.start_control_plane(extra_args=["--outbound-traffic-policy", "REGISTRY_ONLY"])
    with running_proxy(lab, "caller", "default", {}, ("app=caller",)) as admin:
        wait_for_listener(admin, "virtualOutbound")
        outbound = listener_ports(admin)["virtualOutbound"]

        def call(host: str) -> httpx.Response:
            url = f"http://127.0.0.1:{outbound}/"
            return httpx.get(url, headers={"host": host}, timeout=10)

        by_vip, by_name = call(f"{VIP}:8080"), call("ratings.external.test:8080")
        other_ip = call("240.240.0.6:8080")
    assert by_vip.status_code == by_name.status_code == 200, by_vip.text
    assert by_vip.json()["version"] == by_name.json()["version"] == "v1"
    assert by_vip.json()["host"] == f"{VIP}:8080"  # the request as the client made it
    # An address no ServiceEntry gives: outside the mesh, blocked (REGISTRY_ONLY).
    assert other_ip.status_code == 502
