"""Make-before-break pushes: a client never holds a route to a cluster it was
told no longer exists (Envoy's xDS "eventual consistency considerations": CDS,
EDS, LDS, RDS, then the removal of stale clusters and their endpoints).

Driven over real ADS streams on 127.0.0.1. Each test replays what a client
receives, in order, and checks the invariant after every single response, so
a removal that arrives one response too early fails it.
"""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.translate import CLUSTER, ENDPOINT, ROUTE
from mesh_control_plane.xds import SnapshotCache
from mesh_control_plane.xds.clients import Subscription
from mesh_control_plane.xds.responses import TRANSITION_SUFFIX, ResponseCache

from .test_xds_responses import NODE, Source, packed
from .test_xds_server import A_CLUSTER, B_CLUSTER, A, AdsClient, B, names_in, route_to, service

C = service("c.mesh", 80, "10.0.0.3")
C_CLUSTER = "outbound|80||c.mesh"
ROUTE_NAME = "a.mesh:80"


def routed(response: discovery_pb2.DiscoveryResponse) -> set[str]:
    """Every cluster the routes of an RDS response send traffic to."""
    clusters: set[str] = set()
    for any_msg in response.resources:
        config = route_pb2.RouteConfiguration.FromString(any_msg.value)
        for vhost in config.virtual_hosts:
            for route in vhost.routes:
                action = route.route
                if action.cluster:
                    clusters.add(action.cluster)
                clusters.update(w.name for w in action.weighted_clusters.clusters)
    return clusters


class ClientView:
    """What a SotW client holds after each response: the clusters of its last
    CDS (full state) and the clusters its routes name."""

    def __init__(self) -> None:
        self.clusters: set[str] = set()
        self.routed: set[str] = set()
        self.trace: list[tuple[str, str]] = []

    def apply(self, response: discovery_pb2.DiscoveryResponse) -> None:
        if response.type_url == CLUSTER:
            self.clusters = set(names_in(response))
        elif response.type_url == ROUTE:
            self.routed = routed(response)
        self.trace.append((response.type_url.rsplit(".", 1)[-1], response.version_info))
        dangling = self.routed - self.clusters
        assert not dangling, f"route names removed clusters {dangling}; trace {self.trace}"


@pytest.fixture
async def cache() -> SnapshotCache:
    cache = SnapshotCache()
    cache.set_config(
        MeshConfig(service_entries=(A, B), virtual_services=(route_to("a.mesh", "b.mesh"),))
    )
    return cache


async def subscribed(
    stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, node_id: str, view: ClientView
) -> AdsClient:
    """A client with CDS wildcard, EDS for a and b and RDS for a.mesh, all ACKed."""
    client = AdsClient(stub, node_id)
    for type_url, names in (
        (CLUSTER, []),
        (ENDPOINT, [A_CLUSTER, B_CLUSTER]),
        (ROUTE, [ROUTE_NAME]),
    ):
        await client.send(type_url, names)
        response = await client.recv()
        view.apply(response)
        await client.send(type_url, names, ack=response)
    assert view.routed == {B_CLUSTER}
    return client


async def test_removal_waits_for_the_route_and_an_added_cluster_comes_first(
    stub, clients, cache, server
) -> None:
    view = ClientView()
    client = await subscribed(stub, "n1", view)
    clients.append(client)

    cache.set_config(
        MeshConfig(service_entries=(A, C), virtual_services=(route_to("a.mesh", "c.mesh"),))
    )

    pushed = [await client.recv() for _ in range(4)]
    for response in pushed:
        view.apply(response)
    kinds = [(r.type_url, r.version_info, sorted(names_in(r))) for r in pushed]
    assert kinds == [
        (CLUSTER, "2" + TRANSITION_SUFFIX, [A_CLUSTER, B_CLUSTER, C_CLUSTER]),
        (ROUTE, "2", [ROUTE_NAME]),
        (CLUSTER, "2", [A_CLUSTER, C_CLUSTER]),
        (ENDPOINT, "2", [A_CLUSTER]),  # b's endpoints dropped only after its cluster
    ]
    assert view.routed == {C_CLUSTER}
    # the EDS union equals what the client had (b was only removed): not re-sent
    assert pushed[1].type_url == ROUTE

    # Convergence counts the final responses: the union's ACK is stale and ignored.
    metrics = server.servicer.metrics
    for response in pushed:
        names = [ROUTE_NAME] if response.type_url == ROUTE else []
        if response.type_url == ENDPOINT:
            names = [A_CLUSTER, B_CLUSTER]
        await client.send(response.type_url, names, ack=response)
        if response is pushed[0]:
            assert metrics.last_convergence is None
    await client.send(ENDPOINT, [A_CLUSTER])  # barrier: its answer follows every ACK
    answer = await client.recv()
    assert (answer.type_url, names_in(answer)) == (ENDPOINT, [A_CLUSTER])
    assert metrics.last_convergence is not None
    (record,) = server.servicer.clients()
    assert record.types[CLUSTER].acked_version == "2"


async def test_a_stream_behind_gets_the_union_with_what_it_was_last_sent(
    stub, clients, cache
) -> None:
    """Two versions queued before the client reads any: each removal still
    waits for the routes of its own version."""
    view = ClientView()
    client = await subscribed(stub, "n1", view)
    clients.append(client)

    cache.set_config(
        MeshConfig(service_entries=(A, C), virtual_services=(route_to("a.mesh", "c.mesh"),))
    )
    cache.set_config(MeshConfig(service_entries=(A,)))

    pushed = [await client.recv() for _ in range(6)]
    for response in pushed:
        view.apply(response)
    assert [(r.type_url, r.version_info) for r in pushed] == [
        (CLUSTER, "2" + TRANSITION_SUFFIX),
        (ROUTE, "2"),
        (CLUSTER, "2"),
        (ENDPOINT, "2"),
        (ROUTE, "3"),  # c's cluster only goes (nothing added) after the route leaves it
        (CLUSTER, "3"),
    ]
    assert view.routed == {A_CLUSTER} and view.clusters == {A_CLUSTER}


async def test_streams_making_the_same_move_share_one_serialized_union(
    stub, clients, cache
) -> None:
    views = [ClientView(), ClientView()]
    for i, view in enumerate(views):
        clients.append(await subscribed(stub, f"n{i}", view))

    cache.set_config(
        MeshConfig(service_entries=(A, C), virtual_services=(route_to("a.mesh", "c.mesh"),))
    )

    firsts = [await client.recv() for client in clients]
    assert all(f.version_info == "2" + TRANSITION_SUFFIX for f in firsts)
    assert firsts[0].nonce == firsts[1].nonce  # the same bytes, built once
    assert firsts[0].SerializeToString() == firsts[1].SerializeToString()


async def test_a_push_that_removes_nothing_is_unchanged(stub, clients, cache) -> None:
    view = ClientView()
    client = await subscribed(stub, "n1", view)
    clients.append(client)

    cache.set_config(
        MeshConfig(service_entries=(A, B, C), virtual_services=(route_to("a.mesh", "c.mesh"),))
    )

    first, second = await client.recv(), await client.recv()
    view.apply(first)
    view.apply(second)
    assert [(r.type_url, r.version_info) for r in (first, second)] == [(CLUSTER, "2"), (ROUTE, "2")]
    await client.send(CLUSTER, [A_CLUSTER])  # barrier: no final CDS follows
    assert names_in(await client.recv()) == [A_CLUSTER]


def test_transition_is_memoized_per_pair_until_the_next_version() -> None:
    node = NODE
    source = Source(packed("a"), packed("b"))
    responses = ResponseCache(source)
    responses.reset("1")
    wildcard = Subscription(True, frozenset())
    before = responses.get(node, node.cache_key, CLUSTER, wildcard)

    source.resources = {"a": packed("a", connect_ms=200)}
    responses.reset("2")
    after = responses.get(node, node.cache_key, CLUSTER, wildcard)
    union = responses.transition(before, after)
    assert union is not None and union is not before
    assert union is responses.transition(before, after)  # one serialization for all streams
    assert (union.version, list(union.resources)) == ("2" + TRANSITION_SUFFIX, ["a", "b"])
    assert union.resources["a"] is after.resources["a"]  # new content for what stays
    assert union.resources["b"] is before.resources["b"]  # removed: as last sent
    assert union.nonce not in (before.nonce, after.nonce)
    assert responses.transition(after, after) is None  # nothing removed

    source.resources = {}
    responses.reset("3")
    gone = responses.get(node, node.cache_key, CLUSTER, wildcard)
    assert responses.transition(after, gone) is after  # only a removal: nothing to add first
