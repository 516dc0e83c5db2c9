"""The snapshot cache: versions, memoized translation, shared packed resources,
and refusal of configs whose resources do not refer to one another consistently."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from mesh_control_plane.config.model import (
    MeshConfig,
    Meta,
    ServiceEntry,
    ServicePort,
    WorkloadEndpoint,
)
from mesh_control_plane.translate import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ClientKind,
    NodeInfo,
    ResourceSet,
    translate,
)
from mesh_control_plane.xds import InconsistentConfigError, SnapshotCache
from mesh_control_plane.xds.snapshot import Registry

MESH_A = NodeInfo(id="a", kind=ClientKind.MESH)
MESH_B = NodeInfo(id="b", kind=ClientKind.MESH)
GRPC = NodeInfo(id="g", kind=ClientKind.GRPC)


def service(host: str, port: int, *addresses: str) -> ServiceEntry:
    return ServiceEntry(
        meta=Meta("ServiceEntry", host.split(".")[0], "default", "services.yaml"),
        hosts=(host,),
        ports=(ServicePort(port, "HTTP", "http"),),
        endpoints=tuple(WorkloadEndpoint(a, {"http": port}) for a in addresses),
    )


def mesh(*entries: ServiceEntry) -> MeshConfig:
    return MeshConfig(service_entries=entries)


class CountingTranslator:
    """The real translator, counting calls per node kind."""

    def __init__(self) -> None:
        self.calls: list[NodeInfo] = []

    def __call__(self, config: MeshConfig, registry: Registry, node: NodeInfo) -> ResourceSet:
        self.calls.append(node)
        return translate(config, registry, node)


def test_version_bumps_only_when_config_changes() -> None:
    seen: list[str] = []
    cache = SnapshotCache()
    cache.add_listener(seen.append)
    assert cache.version == "0"
    assert cache.set_config(mesh(service("a.mesh", 80, "10.0.0.1"))) is True
    assert cache.version == "1"
    assert cache.set_config(mesh(service("a.mesh", 80, "10.0.0.1"))) is False
    assert cache.version == "1"
    assert cache.set_config(mesh(service("a.mesh", 80, "10.0.0.2"))) is True
    assert cache.version == "2"
    assert seen == ["1", "2"]


def test_translation_is_memoized_per_cache_key_and_version() -> None:
    counting = CountingTranslator()
    cache = SnapshotCache(reference_nodes=(), translator=counting)
    cache.set_config(mesh(service("a.mesh", 80, "10.0.0.1")))
    counting.calls.clear()
    cache.resources(MESH_A, LISTENER)
    cache.resources(MESH_B, CLUSTER)  # same kind, same cache key: no new translation
    cache.resources(MESH_A, ENDPOINT)
    assert [n.id for n in counting.calls] == ["a"]
    cache.resources(GRPC, LISTENER)
    assert [n.id for n in counting.calls] == ["a", "g"]

    cache.retain(MESH_A)
    counting.calls.clear()
    cache.set_config(mesh(service("a.mesh", 80, "10.0.0.2")))
    # The retained kind was translated (and checked) once while setting the config ...
    assert [n.id for n in counting.calls] == ["a"]
    cache.resources(MESH_B, LISTENER)
    # ... and that translation is what clients of that kind get.
    assert [n.id for n in counting.calls] == ["a"]


def test_packed_resources_are_shared_between_clients_and_versions() -> None:
    cache = SnapshotCache()
    cache.set_config(mesh(service("a.mesh", 80, "10.0.0.1")))
    name = "outbound|80||a.mesh"
    first = cache.resources(MESH_A, CLUSTER)[name]
    assert cache.resources(MESH_B, CLUSTER)[name].any is first.any

    # Adding another service leaves a.mesh's cluster unchanged: same object.
    cache.set_config(mesh(service("a.mesh", 80, "10.0.0.1"), service("b.mesh", 80, "10.0.0.3")))
    assert cache.resources(MESH_A, CLUSTER)[name].any is first.any
    assert set(cache.resources(MESH_A, CLUSTER)) == {name, "outbound|80||b.mesh"}


def test_resource_hash_is_sha256_of_the_packed_bytes() -> None:
    cache = SnapshotCache()
    cache.set_config(mesh(service("a.mesh", 80, "10.0.0.1")))
    packed = cache.resources(MESH_A, CLUSTER)["outbound|80||a.mesh"]
    assert packed.hash == hashlib.sha256(packed.any.value).hexdigest()
    assert packed.any.type_url == CLUSTER
    unpacked = cluster_pb2.Cluster()
    assert packed.any.Unpack(unpacked)
    assert unpacked.name == "outbound|80||a.mesh"

    # A change of endpoints changes the endpoints' hash, not the cluster's.
    before = {t: dict(cache.resources(MESH_A, t)) for t in (CLUSTER, ENDPOINT)}
    cache.set_config(mesh(service("a.mesh", 80, "10.0.0.9")))
    after = {t: dict(cache.resources(MESH_A, t)) for t in (CLUSTER, ENDPOINT)}
    assert after[CLUSTER][packed.name].hash == before[CLUSTER][packed.name].hash
    assert after[ENDPOINT][packed.name].hash != before[ENDPOINT][packed.name].hash


def _drop_endpoints_of(host: str) -> CountingTranslator:
    """A translator that loses a.mesh's ClusterLoadAssignment: a dangling CDS->EDS reference."""

    class Dropping(CountingTranslator):
        def __call__(self, config: MeshConfig, registry: Registry, node: NodeInfo) -> ResourceSet:
            rs = super().__call__(config, registry, node)
            resources: dict[str, Mapping[str, object]] = dict(rs.resources)
            resources[ENDPOINT] = {
                n: m for n, m in rs.resources[ENDPOINT].items() if not n.endswith(host)
            }
            return ResourceSet(resources)  # type: ignore[arg-type]

    return Dropping()


def test_inconsistent_config_is_refused_and_last_good_kept() -> None:
    seen: list[str] = []
    cache = SnapshotCache(translator=_drop_endpoints_of("|bad.mesh"))
    cache.add_listener(seen.append)
    good = mesh(service("a.mesh", 80, "10.0.0.1"))
    cache.set_config(good)

    with pytest.raises(InconsistentConfigError) as refused:
        cache.set_config(
            mesh(service("a.mesh", 80, "10.0.0.1"), service("bad.mesh", 80, "1.1.1.1"))
        )

    assert cache.version == "1"
    assert cache.config is good
    assert seen == ["1"]
    assert set(cache.resources(MESH_A, CLUSTER)) == {"outbound|80||a.mesh"}
    [problem] = refused.value.problems
    assert "outbound|80||bad.mesh" in problem
    assert "MESH" in problem and "GRPC" in problem  # checked for every kind


def test_retained_kinds_are_checked_even_without_reference_nodes() -> None:
    cache = SnapshotCache(reference_nodes=(), translator=_drop_endpoints_of("|bad.mesh"))
    bad = mesh(service("bad.mesh", 80, "1.1.1.1"))
    assert cache.set_config(bad) is True  # nobody connected: nothing to check against
    cache.set_config(MeshConfig())
    cache.retain(GRPC)
    with pytest.raises(InconsistentConfigError):
        cache.set_config(bad)
    cache.release(GRPC)
    assert cache.set_config(bad) is True
