"""Chaos scenario: the control plane replaced by another replica.

Two `meshctl control-plane` replicas serve the same config directory and the
client's bootstrap lists both (gRPC A71 failover). Under load: the replica the
client uses is killed (the client moves to the other), a fresh replica starts on
the dead one's address, and the other is killed (the client moves to the fresh
one). Routing never depends on a live control plane, so not one request may
fail; a backend added at the end must reach the client through the fresh
replica, which proves the client really follows it afterwards."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from harness import HOST, PORT, Cluster, Result, ScenarioCheckFailed, measured
from meshlab import LocalMesh, Proc

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap


def two_server_bootstrap(lab: LocalMesh, node_id: str, addresses: list[str]) -> Bootstrap:
    """meshctl's bootstrap for `node_id` with `xds_servers` listing `addresses`
    in order (meshctl writes only one)."""
    doc = json.loads(Bootstrap.from_file(lab.bootstrap(node_id)).to_json())
    doc["xds_servers"] = [
        {"server_uri": a, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}
        for a in addresses
    ]
    return Bootstrap.from_json(json.dumps(doc))


def wait_until(check: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise ScenarioCheckFailed(f"{what} did not happen within {limit}s")
        time.sleep(0.02)


def _kill(lab: LocalMesh, proc: Proc) -> None:
    proc.kill()
    lab.procs.remove(proc)


def control_plane_replica_swap(
    lab: LocalMesh, rate: float, hold: float, results: list[Result]
) -> None:
    svc = Cluster(lab, replicas=2)  # the fault is in the control plane, not the backends
    replicas = [lab.start_control_plane(), lab.start_control_plane()]
    addresses = [str(r.ready["xds"]) for r in replicas]
    bootstrap = two_server_bootstrap(lab, "chaos-client", addresses)
    with (
        Mesh(bootstrap, preload=[f"{HOST}:{PORT}"]) as mesh,
        measured("control plane replaced by replica", mesh, rate, hold, results),
    ):
        used = addresses.index(mesh.xds.server_uri)
        other = 1 - used

        def on(index: int) -> Callable[[], bool]:
            return lambda: mesh.xds.connected and mesh.xds.server_uri == addresses[index]

        _kill(lab, replicas[used])
        wait_until(on(other), 15, "failover to the other replica")
        time.sleep(hold / 2)
        # A fresh replica where the dead one was (the bootstrap knows only these two
        # addresses), then the replica in use goes too.
        port = int(addresses[used].rsplit(":", 1)[1])
        replicas[used] = lab.start_control_plane(xds_port=port)
        _kill(lab, replicas[other])
        wait_until(on(used), 15, "failover to the fresh replica")
        svc.backends.append(lab.start_http_backend("chaos", "v1"))
        svc.publish()
        svc.wait_for(mesh, {b.ready["port"] for b in svc.backends})
        time.sleep(hold / 2)
