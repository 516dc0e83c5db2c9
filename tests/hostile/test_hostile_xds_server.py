"""A hostile or buggy xDS server (issue 11): the client NACKs what it cannot
use, keeps the last good config, never crashes, keeps its hot path fast while
it is flooded, and its memory stays bounded."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import any_pb2
from hostile_server import CDS, EDS, RDS, Autopilot, ScriptedAds, good_resources

from proxyless_mesh.bootstrap import Bootstrap, XdsServer
from proxyless_mesh.routing._matching import mapping_lookup
from proxyless_mesh.runtime import MeshSnapshot
from proxyless_mesh.snapshot import build_snapshot
from proxyless_mesh.xds_client import XdsClient, XdsState

LISTENER = "p.mesh:80"
STEP = 10.0


class Holder:
    """What a Mesh does with updates: build a snapshot, swap one reference."""

    def __init__(self) -> None:
        self.snapshot: MeshSnapshot | None = None
        self.updates = 0

    def __call__(self, state: XdsState) -> None:
        self.snapshot = build_snapshot(state, self.snapshot)
        self.updates += 1

    def pick(self) -> str:
        snap = self.snapshot
        if snap is None or LISTENER not in snap.routes:
            return "none"
        decision = snap.routes[LISTENER].pick("/x", "GET", mapping_lookup({}))
        return decision.cluster if decision else "none"


@pytest.fixture
def servicer() -> ScriptedAds:
    """The server side; a test that breaks the stream takes the next one here."""
    return ScriptedAds()


@pytest.fixture
async def setup(servicer: ScriptedAds) -> AsyncIterator[tuple[XdsClient, Autopilot, Holder]]:
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    holder = Holder()
    client = XdsClient(
        Bootstrap(xds_servers=(XdsServer(f"127.0.0.1:{port}"),), node_id="victim"),
        on_update=holder,
    )
    await client.start()
    watch = asyncio.create_task(client.watch([LISTENER], timeout=STEP))
    stream = await servicer.next_stream()
    pilot = Autopilot(stream, good_resources())
    await watch
    try:
        yield client, pilot, holder
    finally:
        await pilot.stop()
        await client.close()
        await server.stop(None)


async def settle(pilot: Autopilot, nonce: str | None) -> None:
    """Until the client answered (ACK or NACK) the response with `nonce`: not
    just any answer, which may be a late one to an earlier response."""
    async with asyncio.timeout(STEP):
        while not any(r.response_nonce == nonce for r in pilot.acks + pilot.nacks):
            await asyncio.sleep(0.005)


def assert_last_good(client: XdsClient, holder: Holder) -> None:
    state = client.state
    assert state.is_resolved(LISTENER)
    weights = [
        (c.name, c.weight)
        for c in state.route_configs["r1"].virtual_hosts[0].routes[0].action.clusters  # type: ignore[union-attr]
    ]
    assert weights == [("c1", 80), ("c2", 20)]
    assert holder.pick() in {"c1", "c2"}


def bad_regex_routes() -> Any:
    route = rc.Route(
        match=rc.RouteMatch(safe_regex={"regex": "([unclosed"}),
        route=rc.RouteAction(cluster="c1"),
    )
    return _routes_with(route)


def _routes_with(route: Any) -> Any:
    from envoy.config.route.v3 import route_pb2

    return route_pb2.RouteConfiguration(
        name="r1", virtual_hosts=[rc.VirtualHost(name="vh", domains=["*"], routes=[route])]
    )


def zero_weights() -> Any:
    action = rc.RouteAction(
        weighted_clusters=rc.WeightedCluster(
            clusters=[rc.WeightedCluster.ClusterWeight(name="c1", weight={"value": 0})]
        )
    )
    return _routes_with(rc.Route(match=rc.RouteMatch(prefix="/"), route=action))


def endpoints(name: str, count: int, weight: int = 1, lweight: int = 1) -> Any:
    lbs = [
        ec.LbEndpoint(
            endpoint=ec.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(
                        address=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", port_value=80
                    )
                )
            ),
            load_balancing_weight={"value": weight},
        )
        for i in range(count)
    ]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            ec.LocalityLbEndpoints(lb_endpoints=lbs, load_balancing_weight={"value": lweight})
        ],
    )


def garbage(type_url: str) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=b"\xff\xff\xff\xff garbage")


# Each case: (type URL, resources, whether it must be NACKed).
CASES: dict[str, Callable[[], tuple[str, list[Any], bool]]] = {
    "unknown type URL": lambda: ("type.googleapis.com/evil.Thing", [garbage("x")], True),
    "invalid regex": lambda: (RDS, [bad_regex_routes()], True),
    "all-zero weights": lambda: (RDS, [zero_weights()], True),
    "zero endpoint weight": lambda: (EDS, [endpoints("c1", 3, weight=0)], True),
    "resource that does not parse": lambda: (RDS, [garbage(RDS)], True),
    "duplicate names": lambda: (
        CDS,
        [good_resources()[CDS]["c1"], good_resources()[CDS]["c1"], good_resources()[CDS]["c2"]],
        True,
    ),
    "wrong type inside": lambda: (CDS, [good_resources()[EDS]["c1"]], True),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_responses_are_nacked_and_the_last_good_config_kept(
    setup: tuple[XdsClient, Autopilot, Holder], case: str
) -> None:
    client, pilot, holder = setup
    type_url, resources, nacked = CASES[case]()
    nacks = len(pilot.nacks)
    await settle(pilot, pilot.send(type_url, "evil", *resources))
    assert len(pilot.nacks) == nacks + int(nacked), case
    assert_last_good(client, holder)
    # ...and the next good update is still taken.
    pilot.resources[RDS]["r1"] = _good_routes_90_10()
    await settle(pilot, pilot.send(RDS, "good-2", pilot.resources[RDS]["r1"]))
    assert (
        client.state.route_configs["r1"].virtual_hosts[0].routes[0].action.clusters[0].weight == 90
    )  # type: ignore[union-attr]


def _good_routes_90_10() -> Any:
    from test_xds_client import routes

    return routes("r1", {"c1": 90, "c2": 10})


async def test_a_response_without_nonce_does_not_break_the_stream(
    setup: tuple[XdsClient, Autopilot, Holder],
) -> None:
    client, pilot, holder = setup
    pilot.send(RDS, "no-nonce", _good_routes_90_10(), nonce=False)
    await settle(pilot, pilot.send(RDS, "after", good_resources()[RDS]["r1"]))
    assert_last_good(client, holder)
    assert client.connected


async def test_dangling_references_keep_the_previous_routes(
    setup: tuple[XdsClient, Autopilot, Holder],
) -> None:
    client, pilot, holder = setup
    from test_xds_client import routes

    pilot.silent.add(CDS)  # the CDS for ghost never comes
    await settle(pilot, pilot.send(RDS, "dangling", routes("r1", {"ghost": 100})))
    await asyncio.sleep(0.2)
    assert not client.state.is_resolved(LISTENER)
    # The hot path keeps routing with the previous, complete routes.
    assert holder.pick() in {"c1", "c2"}


async def test_huge_endpoint_list_is_taken_without_stalling_the_hot_path(
    setup: tuple[XdsClient, Autopilot, Holder],
) -> None:
    client, pilot, holder = setup

    def total() -> int:
        return sum(len(lo.endpoints) for lo in client.state.assignments["c1"].localities)

    with HotPath(holder) as hot:
        pilot.send(EDS, "huge", endpoints("c1", 100_000), good_resources()[EDS]["c2"])
        # Wait for this very update (another ACK may arrive first on a busy machine).
        async with asyncio.timeout(STEP * 4):
            while total() != 100_000:
                await asyncio.sleep(0.01)
    assert total() == 100_000
    assert hot.picks > 0 and hot.p99() < 0.05, hot.report()


async def test_oversized_response_is_survived(
    setup: tuple[XdsClient, Autopilot, Holder], servicer: ScriptedAds
) -> None:
    """~15 MB: beyond gRPC's default 4 MB receive limit. The stream breaks
    (RESOURCE_EXHAUSTED), the client reconnects, the last good config stays."""
    client, pilot, holder = setup
    good_c1 = _endpoints_of(client, "c1")
    assert good_c1 == [("10.0.0.1", 8081)]
    pilot.send(EDS, "oversized", endpoints("c1", 600_000), good_resources()[EDS]["c2"])
    # The client drops the stream it cannot read and opens a new one.
    fresh = Autopilot(await servicer.next_stream(), good_resources())
    try:
        async with asyncio.timeout(STEP):
            while not (client.connected and len(fresh.acks) >= len(good_resources())):
                await asyncio.sleep(0.01)
        assert not any(a.version_info == "oversized" for a in pilot.acks + fresh.acks)
        assert _endpoints_of(client, "c1") == good_c1
        assert_last_good(client, holder)
    finally:
        await fresh.stop()


def _endpoints_of(client: XdsClient, cluster: str) -> list[tuple[str, int]]:
    return [
        (ep.address, ep.port)
        for lo in client.state.assignments[cluster].localities
        for ep in lo.endpoints
    ]


async def test_a_flood_of_responses_keeps_latency_and_memory_bounded(
    setup: tuple[XdsClient, Autopilot, Holder],
) -> None:
    client, pilot, holder = setup
    from test_xds_client import routes

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    with HotPath(holder) as hot:
        for i in range(1000):
            weights = {"c1": 1 + i % 99, "c2": 99 - i % 99}
            pilot.send(RDS, f"f{i}", routes("r1", weights))
            if i % 50 == 0:
                pilot.send(EDS, f"f{i}", endpoints("c1", 1000), good_resources()[EDS]["c2"])
            if i % 100 == 0:
                await asyncio.sleep(0)  # let the server write
        async with asyncio.timeout(60):
            while not any(a.version_info == "f999" for a in pilot.acks[-5:] if a.type_url == RDS):
                await asyncio.sleep(0.05)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert grown < 30 * 1024 * 1024, f"memory grew by {grown / 1e6:.1f} MB"
    assert hot.p99() < 0.05, hot.report()
    assert holder.pick() in {"c1", "c2"}
    assert client.connected


class HotPath:
    """A thread doing what a request does (read the snapshot, pick a route)
    in a loop, recording how long each pick takes."""

    def __init__(self, holder: Holder) -> None:
        self.holder = holder
        self.latencies: list[float] = []
        self.lost_routes = 0  # picks that found no route: checked in the test's thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def picks(self) -> int:
        return len(self.latencies)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            if self.holder.pick() == "none":
                self.lost_routes += 1
            self.latencies.append(time.perf_counter() - start)
            self._stop.wait(0.002)

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[int(len(ordered) * 0.99)] if ordered else float("inf")

    def report(self) -> str:
        worst = max(self.latencies, default=0.0)
        return f"{self.picks} picks, p99 {self.p99() * 1e3:.2f} ms, max {worst * 1e3:.1f} ms"

    def __enter__(self) -> HotPath:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            assert self.lost_routes == 0, f"hot path lost its routes {self.lost_routes} times"
