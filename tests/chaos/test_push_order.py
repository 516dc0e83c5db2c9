"""Make-before-break, deterministically: no published snapshot ever has a
route naming a cluster it was told does not exist.

Removing a subset that a route still uses, with the route change in the same
config version (VS then DR in the reverse step: the DestinationRule alone is
refused as a dangling reference, so both land in one push; or DR then VS when
the watcher batches both writes), the control plane used to push CDS (the
subset's cluster gone) before RDS (the route away from it): for a few
milliseconds the client's route named a cluster declared absent, and requests
failed fast with NoHealthyUpstreamError (the subset chaos cases, now and then).
Envoy's xDS protocol ("eventual consistency considerations") asks for stale
clusters to be removed only after the new routes: the server now sends CDS with
the old clusters kept, then EDS/LDS/RDS, then CDS without them. The hook sees
every snapshot the client publishes, so the window cannot be missed."""

from __future__ import annotations

import time

import pytest
from harness import HOST, PORT
from meshlab import LocalMesh, service_entry, subsets_rule
from scenarios import virtual_service

from proxyless_mesh import Mesh
from proxyless_mesh.xds_client import XdsState

pytestmark = pytest.mark.chaos


def test_no_route_ever_names_a_cluster_declared_absent(lab: LocalMesh) -> None:
    v1 = lab.start_http_backend("chaos", "v1")
    v2 = lab.start_http_backend("chaos", "v2")
    instances = [
        ("127.0.0.1", p.ready["port"], {"version": v}) for v, p in (("v1", v1), ("v2", v2))
    ]
    lab.write_config("chaos.yaml", service_entry(HOST, PORT, instances))
    lab.write_config("dr.yaml", subsets_rule(HOST, ["v1", "v2"]))
    lab.write_config(
        "vs.yaml", virtual_service({"route": [{"destination": {"host": HOST, "subset": "v2"}}]})
    )
    lab.start_control_plane()
    mesh = Mesh.from_bootstrap(lab.bootstrap("chaos-client"), preload=[f"{HOST}:{PORT}"])
    dangling: list[set[str]] = []
    published = mesh._on_update

    def watch(state: XdsState) -> None:
        # Every published snapshot, not a poll: the window is a few milliseconds.
        published(state)
        dangling.append(routed() & state.absent_clusters)

    mesh._on_update = watch  # type: ignore[method-assign]

    def routed() -> set[str]:
        return {c for t in mesh.snapshot.routes.values() for c in t.referenced_clusters()}

    def wait_routed(cluster: str) -> None:
        deadline = time.monotonic() + 15
        while routed() != {cluster}:
            if time.monotonic() > deadline:
                raise TimeoutError(f"route to {cluster} never arrived: {routed()}")
            time.sleep(0.01)

    with mesh:
        wait_routed(f"outbound|{PORT}|v2|{HOST}")
        dangling.clear()
        lab.write_config("dr.yaml", subsets_rule(HOST, ["v1"]))  # refused alone: dangling
        lab.write_config("vs.yaml", virtual_service({"route": [{"destination": {"host": HOST}}]}))
        wait_routed(f"outbound|{PORT}||{HOST}")
    assert dangling, "no update observed"
    assert [d for d in dangling if d] == []
