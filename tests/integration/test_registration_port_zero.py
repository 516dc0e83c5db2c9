"""Port-0 servers join the mesh with the ports they announce (real processes).

Backends (announcing_backend.py) start a Mesh whose Registration names no port
number, then serve on port 0: `serve_asgi` announces "http", `add_mesh_port`
announces "grpc". The control plane (test_registration_end_to_end.Plane) must list
them with their real ports, and a mesh client's HTTP requests and gRPC call must
reach them there.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from meshlab import LocalMesh, Proc, ProcessFailed, start_process
from test_registration_end_to_end import URL, Plane, wait_for

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap

SCRIPT = Path(__file__).with_name("announcing_backend.py")
GRPC_HOST = "reviews-grpc.default.svc"
GRPC_SERVICE_ENTRY = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "ServiceEntry",
    "metadata": {"name": "reviews-grpc", "namespace": "default"},
    "spec": {
        "hosts": [GRPC_HOST],
        "ports": [{"number": 9090, "name": "grpc", "protocol": "GRPC"}],
        "resolution": "STATIC",
        "workloadSelector": {"labels": {"app": "reviews", "speaks": "grpc"}},
    },
}


@pytest.fixture
def plane(lab: LocalMesh) -> Iterator[Plane]:
    p = Plane(lab.workdir, extra_config=json.dumps(GRPC_SERVICE_ENTRY))
    try:
        yield p
    finally:
        lab.close()  # the workloads first, then the control plane they talk to
        p.close()


def start_announcing(
    lab: LocalMesh, plane: Plane, node: str, *extra: str, group: str = "default/reviews"
) -> Proc:
    bootstrap = plane.bootstrap(lab.workdir, node, "reviews")
    argv = [sys.executable, str(SCRIPT), "--bootstrap", str(bootstrap), "--group"]
    proc = start_process(node, [*argv, group, *extra], lab.workdir)
    lab.procs.append(proc)
    return proc


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

    client_bootstrap = Bootstrap.from_file(plane.bootstrap(lab.workdir, "client", "client"))
    with Mesh(client_bootstrap) as mesh:
        with httpx.Client(transport=mesh.httpx_transport()) as client:
            versions: Counter[str] = Counter()
            for _ in range(40):
                response = client.get(URL)
                assert response.status_code == 200, response.text
                versions[response.json()["version"]] += 1
            assert versions["v1"] > 0 and versions["v2"] > 0, versions
        channel = mesh.grpc_channel(f"{GRPC_HOST}:9090")
        try:
            call = channel.unary_unary("/test.Echo/Version")
            assert call(b"", timeout=10) == b"v2"
        finally:
            channel.close()

    # A deferred registration refused (another identity's group): serve_asgi
    # raises it and the server stops, rather than serving outside the mesh.
    with pytest.raises(ProcessFailed) as refused:
        start_announcing(lab, plane, "impostor", "--version", "v1", group="default/ratings")
    assert "RegistrationError" in str(refused.value) and "PERMISSION_DENIED" in str(refused.value)
