"""`meshctl simulate` agrees with the transport: for a table of requests, the
endpoint set simulate names is exactly the set of real backends the meshed
httpx client reaches through a real control plane."""

from __future__ import annotations

import json

import httpx
from mesh_control_plane.cli.offline import load_offline
from mesh_control_plane.cli.simulate_cmd import simulate
from meshlab import LocalMesh, service_entry, subsets_rule

from proxyless_mesh import Mesh

HOST = "reviews.default.mesh"
BASE = f"http://{HOST}:8080"
# 40 requests over a 50/50 split miss one side with probability 2 * 0.5**40.
SENDS = 40

ROUTES = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "reviews", "namespace": "default"},
    "spec": {
        "hosts": [HOST],
        "http": [
            {
                "name": "canary",
                "match": [{"headers": {"x-canary": {"exact": "yes"}}}],
                "route": [{"destination": {"host": HOST, "subset": "v2"}}],
            },
            {
                "name": "pinned",
                "match": [{"uri": {"prefix": "/only-v1"}}],
                "route": [{"destination": {"host": HOST, "subset": "v1"}}],
            },
            {
                "name": "split",
                "route": [
                    {"destination": {"host": HOST, "subset": "v1"}, "weight": 50},
                    {"destination": {"host": HOST, "subset": "v2"}, "weight": 50},
                ],
            },
        ],
    },
}

TABLE = [
    ("GET", "/reviews", {"x-canary": "yes"}, "default/reviews/canary"),
    ("POST", "/only-v1/items", {}, "default/reviews/pinned"),
    ("GET", "/reviews", {"x-canary": "no"}, "default/reviews/split"),
]


def test_simulate_matches_the_transport(lab: LocalMesh) -> None:
    v1 = lab.start_http_backend("reviews", "v1")
    v2 = lab.start_http_backend("reviews", "v2")
    ports = {"v1": v1.ready["port"], "v2": v2.ready["port"]}
    instances = [("127.0.0.1", port, {"version": v}) for v, port in ports.items()]
    lab.write_config(
        "reviews.yaml",
        service_entry(HOST, 8080, instances) + "\n---\n" + subsets_rule(HOST, ["v1", "v2"]),
    )
    lab.write_config("route.yaml", json.dumps(ROUTES))
    lab.start_control_plane()
    offline = load_offline(lab.config_dir)

    with (
        Mesh.from_bootstrap(lab.bootstrap("sim-client")) as mesh,
        httpx.Client(transport=mesh.httpx_transport()) as client,
    ):
        for method, path, headers, route in TABLE:
            predicted = simulate(offline, method, BASE + path, list(headers.items()))
            assert predicted["route"] == route
            expected = {e["address"] for c in predicted["clusters"] for e in c["endpoints"]}
            reached = set()
            for _ in range(SENDS):
                response = client.request(method, BASE + path, headers=headers)
                assert response.status_code == 200, response.text
                reached.add(f"127.0.0.1:{ports[response.json()['version']]}")
            assert reached == expected, (method, path, headers, predicted)
