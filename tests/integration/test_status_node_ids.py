"""Every ADS stream names its node (issue 17): a mesh that only serves gRPC
(`add_mesh_port`, nothing subscribed) used to hold a stream that had sent no
request, shown by `meshctl status` as a `?` row with an empty node id."""

from __future__ import annotations

import json
import subprocess
import time
from concurrent import futures
from typing import Any

import grpc
from meshlab import BIN, LocalMesh

from proxyless_mesh import Mesh
from proxyless_mesh.serving import add_mesh_port


def _status(lab: LocalMesh, *extra: str) -> str:
    done = subprocess.run(
        [str(BIN / "meshctl"), "status", "--admin-address", lab.admin_address, *extra],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout


def _clients(lab: LocalMesh) -> list[dict[str, Any]]:
    clients: list[dict[str, Any]] = json.loads(_status(lab, "--json"))["clients"]
    return clients


def test_a_grpc_server_only_mesh_has_its_node_id_in_status(lab: LocalMesh) -> None:
    lab.start_control_plane()
    bootstrap = lab.bootstrap(
        "grpc-server-1", "shop", "ratings", token=lab.token("shop", "ratings")
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    with Mesh.from_bootstrap(bootstrap) as mesh:
        add_mesh_port(server, "127.0.0.1:0", mesh, port_name=None)
        server.start()
        try:
            # The stream is up once Mesh entered; its first request is on its way.
            deadline = time.monotonic() + 10
            while not any(c["node_id"] == "grpc-server-1" for c in _clients(lab)):
                assert time.monotonic() < deadline, _clients(lab)
                time.sleep(0.1)
            clients = _clients(lab)
            assert [c["node_id"] for c in clients] == ["grpc-server-1"], clients
            assert clients[0]["service_account"] == "ratings"
            table = _status(lab)
            assert "grpc-server-1" in table
            assert not any(line.startswith("?") for line in table.splitlines()), table
        finally:
            server.stop(None)
