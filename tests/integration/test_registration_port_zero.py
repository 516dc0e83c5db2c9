"""Port-0 servers join the mesh with the ports they announce (real processes).

Backends (announcing_backend.py) start a Mesh whose Registration names no port
number, then serve on port 0: `serve_asgi` announces "http", `add_mesh_port`
announces "grpc". The control plane (registration_plane.Plane) must list
them with their real ports, and a mesh client's HTTP requests and gRPC call must
reach them there.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import httpx
import pytest
from meshlab import LocalMesh, Proc, ProcessFailed
from registration_plane import (
    GRPC_HOST,
    HERE,
    Plane,
    echo_version,
    serve_plane,
    start_backend,
    versions_answering,
    wait_for,
)

from proxyless_mesh import Mesh

SCRIPT = HERE / "announcing_backend.py"


@pytest.fixture
def plane(lab: LocalMesh) -> Iterator[Plane]:
    yield from serve_plane(lab, Plane.with_groups_dir(lab.workdir, grpc_service=True))


def start_announcing(
    lab: LocalMesh, plane: Plane, node: str, *extra: str, group: str = "default/reviews"
) -> Proc:
    return start_backend(lab, plane, SCRIPT, node, "--group", group, *extra)


def test_port_zero_servers_are_reached_on_the_ports_they_announce(
    lab: LocalMesh, plane: Plane
) -> None:
    # v1: Registration(ports=None), HTTP only. v2: ports={"http": 0, "grpc": 0}.
    a = start_announcing(lab, plane, "reviews-a", "--version", "v1")
    b = start_announcing(
        lab, plane, "reviews-b", "--version", "v2", "--announce", "http,grpc", "--grpc"
    )
    assert set(a.ready) == {"http", "pid"} and set(b.ready) == {"http", "grpc", "pid"}
    http_ports = sorted([a.ready["http"], b.ready["http"]])
    assert 9080 not in http_ports  # the template's number is not what they bound
    wait_for(lambda: plane.ports() == http_ports, 10, "both HTTP ports in EDS")
    wait_for(
        lambda: plane.eds(GRPC_HOST, 9090) == {b.ready["grpc"]: "HEALTHY"},
        10,
        "the announced gRPC port in EDS",
    )

    with Mesh(plane.client_bootstrap(lab.workdir)) as mesh:
        with httpx.Client(transport=mesh.httpx_transport()) as client:
            versions = versions_answering(client, 40)
            assert versions["v1"] > 0 and versions["v2"] > 0, versions
        assert echo_version(mesh) == b"v2"

    # A deferred registration refused (another identity's group): serve_asgi
    # raises it and the server stops, rather than serving outside the mesh.
    with pytest.raises(ProcessFailed) as refused:
        start_announcing(lab, plane, "impostor", "--version", "v1", group="default/ratings")
    assert "RegistrationError" in str(refused.value) and "PERMISSION_DENIED" in str(refused.value)


def test_serve_asgi_drains_before_it_stops_listening(lab: LocalMesh, plane: Plane) -> None:
    """SIGTERM: the endpoint turns DRAINING while the server still answers, and
    only after the drain time does the server close its port and leave EDS."""
    backend = start_announcing(lab, plane, "reviews-a", "--version", "v1", "--drain", "2")
    port = backend.ready["http"]
    wait_for(lambda: plane.eds() == {port: "HEALTHY"}, 10, "the endpoint in EDS")
    backend.popen.send_signal(signal.SIGTERM)
    wait_for(lambda: plane.eds().get(port) == "DRAINING", 5, "the endpoint DRAINING")
    answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    assert answer.status_code == 200 and answer.json()["version"] == "v1"
    # uvicorn re-raises the signal it caught once it has shut down cleanly.
    assert backend.popen.wait(15) in (0, -signal.SIGTERM)
    wait_for(lambda: port not in plane.eds(), 10, "the endpoint out of EDS")
