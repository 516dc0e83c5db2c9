"""gRPC with the defaults only: a STRICT `add_mesh_port` server and a client mesh,
both with bootstraps the real `meshctl bootstrap` wrote with the tour's flags
(no --credentials-dir).

- `mesh.grpc_channel(target, native=True)` reaches the server over mTLS and the
  server sees the client's SPIFFE ID (grpcio's xDS credentials, reading the
  certificate files the bootstrap's default `certificate_providers` name).
- `mesh.grpc_channel(target)` and `mesh.aio_grpc_channel(target)` (library
  mode) reach it over mTLS through the in-process TLS bridge, the server sees
  the client's SPIFFE ID, and the bridge checks the server's: the same server
  declared with another `serviceAccount` is never sent the call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from meshlab import LocalMesh, service_entry, start_process

HERE = Path(__file__).resolve().parent
HOST = "greeter.default.mesh"
IMPOSTOR = "impostor.default.mesh"
PORT = 50051
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/frontend"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/greeter"


def bootstrap(lab: LocalMesh, node: str, sa: str) -> Path:
    """`meshctl bootstrap` with exactly the README tour's flags."""
    path = lab.workdir / f"{node}.json"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "meshctl"),
            "bootstrap",
            "--xds-address", lab.xds_address,
            "--ca-address", lab.ca_address,
            "--token", lab.token("default", sa),
            "--node-id", node,
            "--namespace", "default",
            "--service-account", sa,
            "-o", str(path),
        ],
        check=True,
    )  # fmt: skip
    return path


def test_strict_grpc_server_with_default_bootstraps(lab: LocalMesh) -> None:
    lab.start_control_plane()
    server_boot = bootstrap(lab, "greeter-1", "greeter")
    client_boot = bootstrap(lab, "frontend-1", "frontend")
    assert "certificate_providers" in json.loads(client_boot.read_text())

    server = start_process(
        "greeter",
        [sys.executable, str(HERE / "grpc_defaults_server.py"), str(server_boot)],
        lab.workdir,
    )
    lab.procs.append(server)
    assert server.ready["identity"] == SERVER_ID
    entry = json.loads(
        service_entry(HOST, PORT, [("127.0.0.1", server.ready["port"], {})], protocol="GRPC")
    )
    entry["spec"]["endpoints"][0]["serviceAccount"] = "greeter"
    lab.write_config("greeter.yaml", json.dumps(entry))
    # The same server under another name, declared to run as someone else.
    entry["metadata"]["name"] = "impostor"
    entry["spec"]["hosts"] = [IMPOSTOR]
    entry["spec"]["endpoints"][0]["serviceAccount"] = "someone-else"
    lab.write_config("impostor.yaml", json.dumps(entry))

    done = subprocess.run(
        [
            sys.executable,
            str(HERE / "grpc_defaults_client.py"),
            f"{HOST}:{PORT}",
            f"{IMPOSTOR}:{PORT}",
        ],
        env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(client_boot)},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["identity"] == CLIENT_ID
    assert out["native"] == CLIENT_ID, out
    assert out["aio_native"] == CLIENT_ID, out
    assert out["library"] == CLIENT_ID, out
    assert out["aio"] == CLIENT_ID, out
    # Library mode checks the server's SPIFFE ID before sending: the wrong one
    # is refused (the bridge logs both IDs; grpcio sees the connection fail).
    assert out["impostor"]["code"] == "UNAVAILABLE", out
    assert f"presented {SERVER_ID}, expected spiffe://cluster.local/ns/default/sa/someone-else" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr and "destroyed" not in done.stderr, done.stderr
