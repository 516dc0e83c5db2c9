"""The blocking server helpers announce their port-0 ports too (real processes).

test_registration_port_zero.py covers serve_asgi and grpc.aio; here the other two
announcers: a real gunicorn (arbiter + a forked MeshSyncWorker, bound to
127.0.0.1:0) whose worker announces "http", and a sync `grpc.server` whose
`add_mesh_port` announces "grpc" from a non-loop thread. Each backend's
Registration names its port with 0, so it can only be in EDS with the port it
announced; a mesh client must reach it there, and a clean stop must take it out.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from meshlab import LocalMesh, Proc
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

GUNICORN = Path(sys.executable).with_name("gunicorn")


@pytest.fixture
def plane(lab: LocalMesh) -> Iterator[Plane]:
    yield from serve_plane(lab, Plane.with_groups_dir(lab.workdir, grpc_service=True))


def start_version(lab: LocalMesh, plane: Plane, script: str, node: str, version: str) -> Proc:
    args = ("--group", "default/reviews", "--version", version)
    return start_backend(lab, plane, HERE / script, node, *args)


@pytest.mark.skipif(not GUNICORN.exists(), reason="gunicorn is not installed in this venv")
def test_gunicorn_worker_registers_the_port_gunicorn_bound(lab: LocalMesh, plane: Plane) -> None:
    a = start_version(lab, plane, "gunicorn_announcing_backend.py", "reviews-a", "v1")
    b = start_version(lab, plane, "gunicorn_announcing_backend.py", "reviews-b", "v2")
    for proc in (a, b):
        # Registered with the worker's bound socket port, from a forked worker.
        assert proc.ready["http"] == proc.ready["bound"] != 9080, proc.ready
        assert proc.ready["pid"] != proc.popen.pid
    ports = sorted([a.ready["http"], b.ready["http"]])
    wait_for(lambda: plane.ports() == ports, 10, "both gunicorn ports in EDS")

    with (
        Mesh(plane.client_bootstrap(lab.workdir)) as mesh,
        httpx.Client(transport=mesh.httpx_transport()) as client,
    ):
        versions = versions_answering(client, 20)
        assert versions["v1"] > 0 and versions["v2"] > 0, versions

    # SIGTERM to the arbiter: the worker deregisters (DRAINING in EDS) and keeps
    # answering through the drain, then stops and leaves EDS.
    port_a = a.ready["http"]
    a.popen.send_signal(signal.SIGTERM)
    wait_for(lambda: plane.eds().get(port_a) == "DRAINING", 5, "a draining in EDS")
    answer = httpx.get(f"http://127.0.0.1:{port_a}/", timeout=2)
    assert answer.status_code == 200 and answer.json()["version"] == "v1"
    assert a.popen.wait(15) == 0
    wait_for(lambda: plane.ports() == [b.ready["http"]], 10, "the stopped worker out of EDS")


def test_sync_grpc_server_registers_the_port_add_mesh_port_bound(
    lab: LocalMesh, plane: Plane
) -> None:
    proc = start_version(lab, plane, "sync_grpc_announcing_backend.py", "reviews-grpc", "v7")
    assert proc.ready["grpc"] == proc.ready["bound"] != 9090, proc.ready
    wait_for(
        lambda: plane.eds(GRPC_HOST, 9090) == {proc.ready["grpc"]: "HEALTHY"},
        10,
        "the announced gRPC port in EDS",
    )

    with Mesh(plane.client_bootstrap(lab.workdir)) as mesh:
        assert echo_version(mesh) == b"v7"

    assert proc.stop(signal.SIGTERM, timeout=15) == 0
    wait_for(lambda: plane.eds(GRPC_HOST, 9090) == {}, 10, "the stopped server out of EDS")
