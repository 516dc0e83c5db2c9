"""A host outside the mesh is recognised in one round trip, not after gRPC's
15 s does-not-exist timer: the client declares a never-received listener
absent only from a response the control plane built after reading the
subscription, and the control plane answers each subscription change at once.
REGISTRY_ONLY makes the decision observable: OutsideMeshError is raised only
once the host is known not to exist (before that the request waits)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from meshlab import LocalMesh, service_entry

from proxyless_mesh import Mesh, OutsideMeshError

HOST = "reviews.default.mesh"
FAST = 3.0  # seconds; the timer would take 15


def _refused_in(client: httpx.Client, url: str) -> float:
    started = time.monotonic()
    with pytest.raises(OutsideMeshError):
        client.get(url)
    return time.monotonic() - started


def test_non_mesh_hosts_resolve_without_waiting_for_the_timer(lab: LocalMesh) -> None:
    backend = lab.start_http_backend("reviews", "v1")
    lab.write_config(
        "reviews.yaml",
        service_entry(HOST, 8080, [("127.0.0.1", backend.ready["port"], {"version": "v1"})]),
    )
    lab.start_control_plane()
    with (
        Mesh.from_bootstrap(lab.bootstrap("c"), outbound_policy="REGISTRY_ONLY") as mesh,
        httpx.Client(transport=mesh.httpx_transport()) as client,
    ):
        assert client.get(f"http://{HOST}:8080/").status_code == 200  # LDS answered once
        one_by_one = [_refused_in(client, f"http://out{i}.example:80/") for i in range(4)]
        assert max(one_by_one) < FAST, one_by_one
        # Several new hosts at once: their subscriptions race each other's answers.
        with ThreadPoolExecutor(6) as pool:
            urls = [f"http://burst{i}.example:80/" for i in range(6)]
            at_once = list(pool.map(lambda u: _refused_in(client, u), urls))
        assert max(at_once) < FAST, at_once
        # The mesh host is still routed (nothing was wrongly declared absent).
        assert client.get(f"http://{HOST}:8080/").status_code == 200
