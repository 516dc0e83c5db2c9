"""Chaos scenario: the control plane replaced by another replica.

Two `meshctl control-plane` replicas serve the same config directory and the
client's bootstrap lists both (gRPC A71 failover). Under load: the replica the
client uses is killed (the client moves to the other), a fresh replica takes
the dead one's place, and the other is killed (the client moves to the fresh
one). Routing never depends on a live control plane, so not one request may
fail; a backend added at the end must reach the client through the fresh
replica, which proves the client really follows it afterwards. Each replica
slot is a stable address (relay.py): a replica started again gets a port of
its own, never the dead one's."""

from __future__ import annotations

import time
from collections.abc import Callable

from harness import HOST, PORT, Cluster, Result, ScenarioCheckFailed, measured
from meshlab import LocalMesh, Proc
from relay import Relay, bootstrap_for

from proxyless_mesh import Mesh


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
    # The bootstrap lists two stable addresses; a replica started again binds a
    # new port, and the relay in front of its slot follows it (relay.py).
    relays = [Relay(str(r.ready["xds"])) for r in replicas]
    addresses = [r.address for r in relays]
    bootstrap = bootstrap_for(lab, "chaos-client", addresses)
    try:
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
            # A fresh replica in the dead one's slot, then the replica in use goes too.
            replicas[used] = lab.start_control_plane()
            relays[used].point_at(str(replicas[used].ready["xds"]))
            _kill(lab, replicas[other])
            relays[other].point_at(None)
            wait_until(on(used), 15, "failover to the fresh replica")
            svc.backends.append(lab.start_http_backend("chaos", "v1"))
            svc.publish()
            svc.wait_for(mesh, {b.ready["port"] for b in svc.backends})
            time.sleep(hold / 2)
    finally:
        for relay in relays:
            relay.close()
