"""Translator behaviour: consistency, determinism, and the rules the goldens only show."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from mesh_control_plane.config.model import (
    DestinationRule,
    HTTPRoute,
    HTTPRouteDestination,
    MeshConfig,
    ServicePort,
    Subset,
    VirtualService,
    WorkloadEndpoint,
)
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    TYPE_URLS,
    ClientKind,
    NodeInfo,
    ResourceSet,
    check_consistency,
    cluster_name,
    translate,
)

from proxyless_mesh.model import INBOUND_PASSTHROUGH

from .samples import (
    API,
    BACKEND,
    REVIEWS,
    SAMPLES,
    canary,
    http,
    matches,
    meta,
    policy,
    service,
    to,
)

KINDS = list(ClientKind)


def run(config: MeshConfig, kind: ClientKind = ClientKind.MESH) -> ResourceSet:
    return translate(config, build_static_registry(config), NodeInfo(id="n", kind=kind))


def get(rs: ResourceSet, type_url: str, name: str) -> Any:
    """A resource as its concrete message type (ResourceSet types them as Message)."""
    return rs.resources[type_url][name]


def serialized(rs: ResourceSet) -> dict[str, dict[str, bytes]]:
    return {
        type_url: {name: msg.SerializeToString(deterministic=True) for name, msg in by_name.items()}
        for type_url, by_name in rs.resources.items()
    }


def test_cluster_name_follows_istio() -> None:
    assert (
        cluster_name("reviews.default.mesh", 8080, "v1") == "outbound|8080|v1|reviews.default.mesh"
    )
    assert cluster_name("reviews.default.mesh", 8080) == "outbound|8080||reviews.default.mesh"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_every_sample_is_consistent(sample: str, kind: ClientKind) -> None:
    rs = run(SAMPLES[sample](), kind)
    assert set(rs.resources) == set(TYPE_URLS)
    assert rs.resources[LISTENER], "every sample has an HTTP port"
    assert check_consistency(rs) == []


def _without(rs: ResourceSet, type_url: str, name: str) -> ResourceSet:
    resources = {t: dict(by_name) for t, by_name in rs.resources.items()}
    del resources[type_url][name]
    return ResourceSet(resources)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_consistency_reports_each_dangling_reference(kind: ClientKind) -> None:
    rs = run(canary(), kind)
    route_name = next(iter(rs.resources[ROUTE]))
    v2 = cluster_name(REVIEWS, 8080, "v2")

    no_route = check_consistency(_without(rs, ROUTE, route_name))
    assert len(no_route) == 1 and f"RouteConfiguration {route_name!r}" in no_route[0]

    no_cluster = check_consistency(_without(rs, CLUSTER, v2))
    assert len(no_cluster) == 1 and f"Cluster {v2!r}, which is not in the set" in no_cluster[0]

    no_endpoints = check_consistency(_without(rs, ENDPOINT, v2))
    assert no_endpoints == [
        f"Cluster {v2!r} takes endpoints from ClusterLoadAssignment {v2!r}, which is not in the set"
    ]


def test_consistency_follows_eds_service_name() -> None:
    rs = run(canary())
    resources = {t: dict(by_name) for t, by_name in rs.resources.items()}
    name = cluster_name(REVIEWS, 8080)
    renamed = cluster_pb2.Cluster()
    renamed.CopyFrom(resources[CLUSTER][name])
    renamed.eds_cluster_config.service_name = "elsewhere"
    resources[CLUSTER][name] = renamed
    problems = check_consistency(ResourceSet(resources))
    assert len(problems) == 1 and "'elsewhere'" in problems[0]


def test_route_to_undefined_subset_is_pushed_without_its_cluster() -> None:
    # As istiod does: the route names outbound|8080|v9|reviews, which does not
    # exist (the library answers 503 NC); any other dangling cluster is still reported.
    config = dataclasses.replace(
        canary(),
        virtual_services=(
            VirtualService(
                meta=meta("VirtualService", "reviews"),
                hosts=(REVIEWS,),
                http=(HTTPRoute(route=(to(REVIEWS, "v9"),)),),
            ),
        ),
    )
    rs = run(config)
    assert cluster_name(REVIEWS, 8080, "v9") not in rs.resources[CLUSTER]
    assert rs.undefined_subsets == {(REVIEWS, "v9")}
    assert check_consistency(rs) == []
    forgotten = dataclasses.replace(rs, undefined_subsets=frozenset())
    problems = check_consistency(forgotten)
    assert len(problems) == 1 and cluster_name(REVIEWS, 8080, "v9") in problems[0]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_translation_is_deterministic_and_independent_of_input_order(kind: ClientKind) -> None:
    config = matches()
    first = serialized(run(config, kind))
    assert serialized(run(matches(), kind)) == first
    shuffled = dataclasses.replace(config, service_entries=config.service_entries[::-1])
    assert serialized(run(shuffled, kind)) == first
    # Names come out sorted within every type.
    for by_name in run(config, kind).resources.values():
        assert list(by_name) == sorted(by_name)


def test_nodes_with_equal_cache_keys_get_identical_resources() -> None:
    config = canary()
    registry = build_static_registry(config)
    a = NodeInfo(id="a", kind=ClientKind.GRPC, locality=("r", "z", "s"))
    b = NodeInfo(id="b", kind=ClientKind.GRPC, outbound_port=9999, locality=("r", "z", "s"))
    assert a.cache_key == b.cache_key
    assert serialized(translate(config, registry, a)) == serialized(translate(config, registry, b))
    e1 = NodeInfo(id="e", kind=ClientKind.ENVOY, outbound_port=15001)
    e2 = NodeInfo(id="e", kind=ClientKind.ENVOY, outbound_port=15002)
    assert e1.cache_key != e2.cache_key
    assert serialized(translate(config, registry, e1)) != serialized(
        translate(config, registry, e2)
    )


def _lb(config: MeshConfig, kind: ClientKind, name: str) -> int:
    return int(get(run(config, kind), CLUSTER, name).lb_policy)


@pytest.mark.parametrize(
    ("simple", "kind", "expected"),
    [
        ("LEAST_REQUEST", ClientKind.MESH, cluster_pb2.Cluster.LEAST_REQUEST),
        ("LEAST_REQUEST", ClientKind.ENVOY, cluster_pb2.Cluster.LEAST_REQUEST),
        ("LEAST_REQUEST", ClientKind.GRPC, cluster_pb2.Cluster.ROUND_ROBIN),
        ("RANDOM", ClientKind.MESH, cluster_pb2.Cluster.RANDOM),
        ("RANDOM", ClientKind.GRPC, cluster_pb2.Cluster.ROUND_ROBIN),
        ("ROUND_ROBIN", ClientKind.ENVOY, cluster_pb2.Cluster.ROUND_ROBIN),
        ("PASSTHROUGH", ClientKind.MESH, cluster_pb2.Cluster.ROUND_ROBIN),
    ],
)
def test_lb_policy_per_client_kind(simple: str, kind: ClientKind, expected: int) -> None:
    config = dataclasses.replace(
        canary(),
        destination_rules=(
            DestinationRule(meta("DestinationRule", "reviews"), REVIEWS, policy(simple)),
        ),
    )
    assert _lb(config, kind, cluster_name(REVIEWS, 8080)) == expected


def test_subset_policy_overrides_top_level() -> None:
    config = canary()  # top level RANDOM, v2 LEAST_REQUEST
    assert (
        _lb(config, ClientKind.MESH, cluster_name(REVIEWS, 8080, "v1"))
        == cluster_pb2.Cluster.RANDOM
    )
    v2 = cluster_name(REVIEWS, 8080, "v2")
    assert _lb(config, ClientKind.MESH, v2) == cluster_pb2.Cluster.LEAST_REQUEST
    assert _lb(config, ClientKind.GRPC, v2) == cluster_pb2.Cluster.ROUND_ROBIN


def _addresses(rs: ResourceSet, name: str) -> list[tuple[str, int]]:
    assignment = get(rs, ENDPOINT, name)
    return [
        (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
        for group in assignment.endpoints
        for e in group.lb_endpoints
    ]


def test_subset_keeps_only_instances_with_all_its_labels() -> None:
    config = dataclasses.replace(
        canary(),
        destination_rules=(
            DestinationRule(
                meta("DestinationRule", "reviews"),
                REVIEWS,
                subsets=(
                    Subset("v1a", {"version": "v1", "tier": "a"}),
                    Subset("v3", {"version": "v3"}),
                    Subset("all", {}),
                ),
            ),
        ),
        virtual_services=(),
    )
    rs = run(config)
    assert _addresses(rs, cluster_name(REVIEWS, 8080, "v1a")) == [("10.0.1.2", 8080)]
    assert _addresses(rs, cluster_name(REVIEWS, 8080, "all")) == [
        ("10.0.1.1", 8080),
        ("10.0.1.2", 8080),
        ("10.0.1.3", 8080),
    ]
    # Nothing matches: the assignment exists and is empty, so clients learn it now.
    empty = get(rs, ENDPOINT, cluster_name(REVIEWS, 8080, "v3"))
    assert empty.cluster_name == cluster_name(REVIEWS, 8080, "v3")
    assert list(empty.endpoints) == []


def _action(config: MeshConfig, kind: ClientKind = ClientKind.MESH) -> Any:
    rs = run(config, kind)
    return get(rs, ROUTE, f"{REVIEWS}:8080").virtual_hosts[0].routes[0].route


def _with_routes(*destinations: HTTPRouteDestination) -> MeshConfig:
    return dataclasses.replace(
        canary(),
        virtual_services=(
            VirtualService(
                meta=meta("VirtualService", "reviews"),
                hosts=(REVIEWS,),
                http=(HTTPRoute(route=destinations),),
            ),
        ),
    )


def test_zero_weight_destinations_are_dropped() -> None:
    action = _action(
        _with_routes(to(REVIEWS, "v1", 0), to(REVIEWS, "v2", 70), to(REVIEWS, weight=30))
    )
    pairs = [(c.name, c.weight.value) for c in action.weighted_clusters.clusters]
    assert pairs == [(cluster_name(REVIEWS, 8080, "v2"), 70), (cluster_name(REVIEWS, 8080), 30)]


def test_single_remaining_destination_becomes_a_plain_cluster() -> None:
    action = _action(_with_routes(to(REVIEWS, "v1", 0), to(REVIEWS, "v2", 100)))
    assert action.cluster == cluster_name(REVIEWS, 8080, "v2")
    assert not action.HasField("weighted_clusters")


def test_all_zero_weights_split_evenly_rather_than_nack() -> None:
    action = _action(_with_routes(to(REVIEWS, "v1"), to(REVIEWS, "v2")))
    weights = [c.weight.value for c in action.weighted_clusters.clusters]
    assert weights == [1, 1]


def test_destination_port_resolution() -> None:
    rs = run(matches())
    routes = get(rs, ROUTE, f"{API}:8000").virtual_hosts[0].routes
    # explicit port 9000; then the listener's port 8000, which the backend also has.
    assert routes[0].route.cluster == cluster_name(BACKEND, 9000)
    assert routes[2].route.cluster == cluster_name(BACKEND, 8000)
    # A destination with a single port is sent there whatever the listener's port.
    config = MeshConfig(
        service_entries=(
            service("front.mesh", (http(80),)),
            service("only.mesh", (ServicePort(7070, "HTTP", "web"),)),
        ),
        virtual_services=(
            VirtualService(
                meta("VirtualService", "front"),
                ("front.mesh",),
                (HTTPRoute(route=(to("only.mesh"),)),),
            ),
        ),
    )
    front = get(run(config), ROUTE, "front.mesh:80").virtual_hosts[0]
    assert list(front.domains) == ["front.mesh:80", "front.mesh"]
    assert front.routes[0].route.cluster == cluster_name("only.mesh", 7070)


def test_tcp_ports_get_clusters_but_no_listener() -> None:
    config = MeshConfig(
        service_entries=(
            service("db.mesh", (ServicePort(5432, "TCP", "pg"),), (WorkloadEndpoint("10.0.0.5"),)),
        )
    )
    rs = run(config)
    assert list(rs.resources[LISTENER]) == [INBOUND_PASSTHROUGH]  # the library's, always
    assert list(rs.resources[CLUSTER]) == [cluster_name("db.mesh", 5432)]
    assert _addresses(rs, cluster_name("db.mesh", 5432)) == [("10.0.0.5", 5432)]
    envoy = run(config, ClientKind.ENVOY)
    assert list(envoy.resources[LISTENER]) == ["virtualOutbound"]
    # No mesh virtual host: only the catch-all for hosts outside the mesh.
    assert [v.name for v in get(envoy, ROUTE, "virtualOutbound").virtual_hosts] == ["allow_any"]
    assert check_consistency(envoy) == []


def test_envoy_listener_binds_the_node_outbound_port() -> None:
    config = canary()
    node = NodeInfo(id="e", kind=ClientKind.ENVOY, outbound_port=16001)
    rs = translate(config, build_static_registry(config), node)
    address = get(rs, LISTENER, "virtualOutbound").address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", 16001)


def test_resource_set_cannot_be_changed_through_translate_output() -> None:
    rs = run(canary())
    assert isinstance(rs.resources, MappingProxyType)
    with pytest.raises(TypeError):
        rs.resources[CLUSTER]["x"] = cluster_pb2.Cluster()  # type: ignore[index]


def test_explicit_destination_port_wins_and_a_wrong_one_is_reported() -> None:
    config = _with_routes(to(REVIEWS, port=9999))
    assert _action(config).cluster == cluster_name(REVIEWS, 9999)
    assert len(check_consistency(run(config))) == 1
