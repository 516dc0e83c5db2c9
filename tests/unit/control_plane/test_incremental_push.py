"""The snapshot cache with the incremental translator: an endpoint change of one
host re-packs only that host's resources; every other packed resource (its
serialization and hash) is the very object of the previous version."""

from __future__ import annotations

import dataclasses

from mesh_control_plane.config.model import MeshConfig, WorkloadEndpoint
from mesh_control_plane.translate import CLUSTER, ENDPOINT, ClientKind, NodeInfo
from mesh_control_plane.translate.incremental import IncrementalTranslator
from mesh_control_plane.xds import SnapshotCache

from .samples import http, service

HOSTS = [f"svc-{i}.default.mesh" for i in range(5)]


def mesh(unhealthy: str = "") -> MeshConfig:
    return MeshConfig(
        service_entries=tuple(
            service(
                host,
                (http(80),),
                tuple(
                    WorkloadEndpoint(
                        address=f"10.0.{i}.{j}",
                        ports={"http": 8080},
                        health="UNHEALTHY" if f"10.0.{i}.{j}" == unhealthy else "HEALTHY",
                    )
                    for j in range(1, 4)
                ),
            )
            for i, host in enumerate(HOSTS)
        )
    )


def test_only_the_changed_hosts_resources_are_repacked() -> None:
    translator = IncrementalTranslator()
    cache = SnapshotCache(translator=translator)
    node = NodeInfo(id="c", kind=ClientKind.GRPC)
    cache.set_config(mesh())
    before = {t: dict(cache.resources(node, t)) for t in (CLUSTER, ENDPOINT)}
    assert cache.set_config(mesh(unhealthy="10.0.2.1"), force=True)
    after = {t: dict(cache.resources(node, t)) for t in (CLUSTER, ENDPOINT)}
    changed = "outbound|80||svc-2.default.mesh"
    assert after[ENDPOINT][changed].hash != before[ENDPOINT][changed].hash
    for type_url in (CLUSTER, ENDPOINT):
        assert after[type_url].keys() == before[type_url].keys()
        for name, packed in after[type_url].items():
            if name != changed:
                assert packed is before[type_url][name], name
    assert translator.incremental == len(cache.reference_nodes())
    assert translator.full == len(cache.reference_nodes())


def test_a_changed_rule_after_endpoint_changes_is_seen() -> None:
    """The memo must not outlive the config shape it was built for."""
    cache = SnapshotCache(translator=IncrementalTranslator())
    node = NodeInfo(id="c", kind=ClientKind.GRPC)
    cache.set_config(mesh())
    cache.set_config(mesh(unhealthy="10.0.0.1"), force=True)
    fewer = dataclasses.replace(
        mesh(unhealthy="10.0.0.1"), service_entries=mesh().service_entries[:2]
    )
    cache.set_config(fewer)
    assert len(cache.resources(node, ENDPOINT)) == 2
