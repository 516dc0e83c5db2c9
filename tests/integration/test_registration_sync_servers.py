"""The blocking server helpers announce their port-0 ports too (real processes).

test_registration_port_zero.py covers serve_asgi and grpc.aio; here the other two
announcers: a real gunicorn (arbiter + a forked MeshSyncWorker, bound to
127.0.0.1:0) whose worker announces "http", and a sync `grpc.server` whose
`add_mesh_port` announces "grpc" from a non-loop thread. Each backend's
Registration names its port with 0, so it can only be in EDS with the port it
announced; a mesh client must reach it there, and a clean stop must take it out.
"""

from __future__ import annotations

import json
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from meshlab import LocalMesh, Proc, start_process
from test_registration_end_to_end import URL, Plane, wait_for
from test_registration_port_zero import GRPC_HOST, GRPC_SERVICE_ENTRY

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap

HERE = Path(__file__).parent
GUNICORN = Path(sys.executable).with_name("gunicorn")


@pytest.fixture
def plane(lab: LocalMesh) -> Iterator[Plane]:
    p = Plane(lab.workdir, extra_config=json.dumps(GRPC_SERVICE_ENTRY))
    try:
        yield p
    finally:
        lab.close()  # the workloads first, then the control plane they talk to
        p.close()


def start_backend(lab: LocalMesh, plane: Plane, script: str, node: str, version: str) -> Proc:
    bootstrap = plane.bootstrap(lab.workdir, node, "reviews")
    argv = [sys.executable, str(HERE / script), "--bootstrap", str(bootstrap)]
    proc = start_process(
        node, [*argv, "--group", "default/reviews", "--version", version], lab.workdir
    )
    lab.procs.append(proc)
    return proc


@pytest.mark.skipif(not GUNICORN.exists(), reason="gunicorn is not installed in this venv")
def test_gunicorn_worker_registers_the_port_gunicorn_bound(lab: LocalMesh, plane: Plane) -> None:
    a = start_backend(lab, plane, "gunicorn_announcing_backend.py", "reviews-a", "v1")
    b = start_backend(lab, plane, "gunicorn_announcing_backend.py", "reviews-b", "v2")
    for proc in (a, b):
        # Registered with the worker's bound socket port, from a forked worker.
        assert proc.ready["http"] == proc.ready["bound"] != 9080, proc.ready
        assert proc.ready["pid"] != proc.popen.pid
    ports = sorted([a.ready["http"], b.ready["http"]])
    wait_for(lambda: plane.ports() == ports, 10, "both gunicorn ports in EDS")

    client_bootstrap = Bootstrap.from_file(plane.bootstrap(lab.workdir, "client", "client"))
    with Mesh(client_bootstrap) as mesh, httpx.Client(transport=mesh.httpx_transport()) as client:
        versions: Counter[str] = Counter()
        for _ in range(20):
            response = client.get(URL)
            assert response.status_code == 200, response.text
            versions[response.json()["version"]] += 1
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
    proc = start_backend(lab, plane, "sync_grpc_announcing_backend.py", "reviews-grpc", "v7")
    assert proc.ready["grpc"] == proc.ready["bound"] != 9090, proc.ready
    wait_for(
        lambda: plane.eds(GRPC_HOST, 9090) == {proc.ready["grpc"]: "HEALTHY"},
        10,
        "the announced gRPC port in EDS",
    )

    client_bootstrap = Bootstrap.from_file(plane.bootstrap(lab.workdir, "client", "client"))
    with Mesh(client_bootstrap) as mesh:
        channel = mesh.grpc_channel(f"{GRPC_HOST}:9090")
        try:
            call = channel.unary_unary("/test.Echo/Version")
            assert call(b"", timeout=10) == b"v7"
        finally:
            channel.close()

    assert proc.stop(signal.SIGTERM, timeout=15) == 0
    wait_for(lambda: plane.eds(GRPC_HOST, 9090) == {}, 10, "the stopped server out of EDS")
