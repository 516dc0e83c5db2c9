"""Order of arrival, as in Istio: a VirtualService naming a subset no
DestinationRule defines yet is taken (with a warning), requests to that subset
fail with 503 NC, and they succeed once the DestinationRule arrives."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from meshlab import LocalMesh, service_entry, subsets_rule

from proxyless_mesh import Mesh, NoClusterError

HOST = "ratings.default.mesh"
URL = f"http://{HOST}:8080/"
ROUTE = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "ratings", "namespace": "default"},
    "spec": {
        "hosts": [HOST],
        "http": [{"route": [{"destination": {"host": HOST, "subset": "v2"}}]}],
    },
}


def test_route_to_a_subset_defined_later(lab: LocalMesh) -> None:
    v2 = lab.start_http_backend("ratings", "v2")
    lab.write_config(
        "ratings.yaml",
        service_entry(HOST, 8080, [("127.0.0.1", v2.ready["port"], {"version": "v2"})]),
    )
    lab.write_config("route.yaml", json.dumps(ROUTE))  # before any DestinationRule
    lab.start_control_plane()
    status = httpx.get(f"http://{lab.admin_address}/status", timeout=5).json()
    assert status["config_errors"] == []
    assert any('subset "v2"' in w for w in status["config_warnings"]), status

    with (
        Mesh.from_bootstrap(lab.bootstrap("order-client")) as mesh,
        httpx.Client(transport=mesh.httpx_transport(), timeout=10) as client,
    ):
        with pytest.raises(NoClusterError) as caught:
            client.get(URL)
        assert caught.value.response_flag == "NC"
        assert "outbound|8080|v2|ratings.default.mesh" in str(caught.value)

        lab.write_config("rule.yaml", subsets_rule(HOST, ["v2"]))
        start, limit = time.monotonic(), 15.0
        while True:  # busy requests, as other tests wait for a config push to land
            try:
                response = client.get(URL)
                break
            except NoClusterError:
                if time.monotonic() - start > limit:
                    pytest.fail(f"subset v2 still NC {limit}s after the DestinationRule")
        assert response.status_code == 200
        assert response.json()["version"] == "v2"
