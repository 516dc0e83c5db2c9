"""What the spine does when things go wrong: bad config, a dead control
plane, unknown hosts, no route, no endpoints."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections import Counter
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from meshlab import LocalMesh, service_entry, weighted_route
from relay import Relay, bootstrap_for

from proxyless_mesh import (
    ControlPlaneUnavailableError,
    Mesh,
    NoHealthyUpstreamError,
    NoRouteError,
    OutsideMeshError,
)
from proxyless_mesh.bootstrap import make_bootstrap_json

HOST = "reviews.default.mesh"
URL = f"http://{HOST}:8080/"


def versions(client: httpx.Client, n: int) -> Counter[str]:
    return Counter(client.get(URL).json()["version"] for _ in range(n))


def wait_for(predicate, limit: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def start_two_versions(lab: LocalMesh, weights: dict[str, int]) -> None:
    v1 = lab.start_http_backend("reviews", "v1")
    v2 = lab.start_http_backend("reviews", "v2")
    lab.deploy_versions(HOST, 8080, {"v1": v1, "v2": v2}, weights)


def admin_status(lab: LocalMesh) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"http://{lab.admin_address}/status", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_bad_file_is_reported_and_last_good_keeps_serving(lab: LocalMesh) -> None:
    start_two_versions(lab, {"v1": 100, "v2": 0})
    lab.start_control_plane()
    with (
        Mesh.from_bootstrap(lab.bootstrap("c")) as mesh,
        httpx.Client(transport=mesh.httpx_transport()) as client,
    ):
        assert versions(client, 20) == {"v1": 20}
        bad = weighted_route(HOST, {"v1": 0, "v2": 100}).replace(
            '"route": [', '"frobnicate": 1, "route": ['
        )
        lab.write_config("route.yaml", bad)
        expected = (
            "route.yaml: VirtualService default/reviews: spec.http[0].frobnicate: unknown field"
        )
        wait_for(lambda: expected in lab.control_plane.log.read_text(), what="error in the log")  # type: ignore[union-attr]
        assert any(expected in e for e in admin_status(lab)["config_errors"])
        # The bad file asked for v2; the last good config (all v1) still serves.
        assert versions(client, 50) == {"v1": 50}


def test_clients_survive_a_control_plane_restart(lab: LocalMesh) -> None:
    start_two_versions(lab, {"v1": 100, "v2": 0})
    cp = lab.start_control_plane()
    # The restarted control plane gets a port of its own behind a stable address.
    relay = Relay(lab.xds_address)
    with (
        closing(relay),
        Mesh(bootstrap_for(lab, "c", [relay.address])) as mesh,
        httpx.Client(transport=mesh.httpx_transport()) as client,
    ):
        assert versions(client, 20) == {"v1": 20}
        cp.stop(signal.SIGKILL)
        lab.procs.remove(cp)
        wait_for(lambda: not mesh.xds.connected, what="the client to notice")
        # Control plane gone: the last good config keeps routing.
        assert versions(client, 100) == {"v1": 100}
        # Change the config while it is down, then start it again.
        lab.set_weights(HOST, {"v1": 0, "v2": 100})
        relay.point_at(str(lab.start_control_plane().ready["xds"]))
        wait_for(lambda: versions(client, 1) == {"v2": 1}, limit=20, what="the new route")
        assert versions(client, 50) == {"v2": 50}


def test_typed_errors_for_no_route_and_no_endpoints(lab: LocalMesh) -> None:
    backend = lab.start_http_backend("reviews", "v1")
    lab.write_config(
        "reviews.yaml",
        service_entry(HOST, 8080, [("127.0.0.1", backend.ready["port"], {"version": "v1"})]),
    )
    lab.write_config("empty.yaml", service_entry("empty.default.mesh", 8080, []))
    lab.write_config(
        "route.yaml",
        json.dumps(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "reviews", "namespace": "default"},
                "spec": {
                    "hosts": [HOST],
                    "http": [
                        {
                            "match": [{"uri": {"prefix": "/api"}}],
                            "route": [{"destination": {"host": HOST}}],
                        }
                    ],
                },
            }
        ),
    )
    lab.start_control_plane()
    with (
        Mesh.from_bootstrap(lab.bootstrap("c")) as mesh,
        httpx.Client(transport=mesh.httpx_transport()) as client,
    ):
        assert client.get(f"http://{HOST}:8080/api/x").status_code == 200
        with pytest.raises(
            NoRouteError, match=r"no route of reviews\.default\.mesh:8080 matches GET /other"
        ):
            client.get(f"http://{HOST}:8080/other")
        with pytest.raises(NoHealthyUpstreamError, match="no endpoints are registered") as info:
            client.get("http://empty.default.mesh:8080/")
        assert isinstance(info.value, httpx.TransportError)
        assert info.value.response_flag == "UH"
        # Not a mesh host: passes through untouched (ALLOW_ANY).
        direct = client.get(f"http://127.0.0.1:{backend.ready['port']}/direct")
        assert direct.json()["path"] == "/direct"


def test_registry_only_refuses_hosts_outside_the_mesh(lab: LocalMesh) -> None:
    backend = lab.start_http_backend("reviews", "v1")
    lab.write_config(
        "reviews.yaml",
        service_entry(HOST, 8080, [("127.0.0.1", backend.ready["port"], {"version": "v1"})]),
    )
    lab.start_control_plane()
    with Mesh.from_bootstrap(lab.bootstrap("c"), outbound_policy="REGISTRY_ONLY") as mesh:
        client = httpx.Client(transport=mesh.httpx_transport())
        assert client.get(URL).status_code == 200
        with pytest.raises(OutsideMeshError):
            client.get("http://elsewhere.example:8080/")
        with pytest.raises(OutsideMeshError):
            client.get(f"http://127.0.0.1:{backend.ready['port']}/")


def test_entering_without_a_control_plane_fails_in_bounded_time(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.json"
    # Port 9 on loopback (discard) has no gRPC server here: nothing answers.
    path.write_text(
        make_bootstrap_json(
            server_uri="127.0.0.1:9", node_id="n", namespace="default", service_account="sa"
        )
    )
    start = time.monotonic()
    with pytest.raises(ControlPlaneUnavailableError, match=r"127\.0\.0\.1:9"):
        Mesh.from_bootstrap(path, ready_timeout=1.0).start()
    assert time.monotonic() - start < 5.0
