"""The xDS client's protocol behaviour, against a scripted ADS server.

The server is a real grpc.aio server on 127.0.0.1:0 whose responses each test
writes by hand, so every request the client sends can be checked field by field.
(End-to-end runs against the real control plane live with the integration tests.)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, json_format

from proxyless_mesh.bootstrap import Bootstrap, XdsServer
from proxyless_mesh.errors import ControlPlaneUnavailableError
from proxyless_mesh.model import LbPolicy, Locality
from proxyless_mesh.xds_client import ClientStatus, ResourceType, XdsClient, XdsState

LDS = ResourceType.LISTENER.type_url
RDS = ResourceType.ROUTE_CONFIGURATION.type_url
CDS = ResourceType.CLUSTER.type_url
EDS = ResourceType.CLUSTER_LOAD_ASSIGNMENT.type_url
ADS = config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource())
STEP = 5.0  # seconds any single protocol step may take before the test fails

# -- resources ----------------------------------------------------------------------


def packed(msg: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg)
    return out


def listener(name: str, route_name: str) -> Any:
    hcm = hcm_pb2.HttpConnectionManager(
        rds=hcm_pb2.Rds(config_source=ADS, route_config_name=route_name),
        http_filters=[hcm_pb2.HttpFilter(name="router", typed_config=packed(router_pb2.Router()))],
    )
    return listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=packed(hcm))
    )


def routes(name: str, weights: dict[str, int]) -> Any:
    action = rc.RouteAction(
        weighted_clusters=rc.WeightedCluster(
            clusters=[
                rc.WeightedCluster.ClusterWeight(name=c, weight={"value": w})
                for c, w in weights.items()
            ]
        )
    )
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            rc.VirtualHost(
                name="vh",
                domains=["*"],
                routes=[rc.Route(match=rc.RouteMatch(prefix="/"), route=action)],
            )
        ],
    )


def cluster(name: str, service_name: str = "", lb: int = cluster_pb2.Cluster.ROUND_ROBIN) -> Any:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        lb_policy=lb,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=ADS, service_name=service_name
        ),
    )


def assignment(name: str, port: int) -> Any:
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address="10.0.0.1", port_value=port)
            )
        )
    )
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[endpoint], load_balancing_weight={"value": 1}
            )
        ],
    )


# -- the scripted server ---------------------------------------------------------------


class ServerStream:
    """One ADS stream as the server sees it: requests in, scripted responses out."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[Any] = asyncio.Queue()
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._nonce = 0

    async def request(self, type_url: str | None = None) -> Any:
        req = await asyncio.wait_for(self.requests.get(), STEP)
        if type_url is not None:
            assert req.type_url == type_url, req
        return req

    def respond(self, type_url: str, version: str, *resources: Any) -> str:
        self._nonce += 1
        nonce = f"n{self._nonce}"
        self.outbox.put_nowait(
            discovery_pb2.DiscoveryResponse(
                type_url=type_url,
                version_info=version,
                nonce=nonce,
                resources=[r if isinstance(r, any_pb2.Any) else packed(r) for r in resources],
            )
        )
        return nonce

    def close(self) -> None:
        """End the stream from the server side (status OK)."""
        self.outbox.put_nowait(None)


class ScriptedAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.streams: asyncio.Queue[ServerStream] = asyncio.Queue()

    async def next_stream(self) -> ServerStream:
        return await asyncio.wait_for(self.streams.get(), STEP)

    async def StreamAggregatedResources(  # the gRPC method name
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> None:
        stream = ServerStream()
        self.streams.put_nowait(stream)

        async def pump() -> None:
            async for req in request_iterator:
                stream.requests.put_nowait(req)

        reader = asyncio.create_task(pump())
        try:
            while (response := await stream.outbox.get()) is not None:
                await context.write(response)
        finally:
            reader.cancel()


class Gate:
    """An injectable sleep: records each backoff delay and waits for the test to
    open it, so "while disconnected" can be observed without real time."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.sleeping = asyncio.Event()
        self.open = asyncio.Event()
        self.open.set()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.sleeping.set()
        await self.open.wait()


@pytest.fixture
async def ads() -> AsyncIterator[tuple[ScriptedAds, str]]:
    servicer = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def bootstrap(uri: str) -> Bootstrap:
    return Bootstrap(
        xds_servers=(XdsServer(uri),),
        node_id="node-1",
        node_cluster="reviews",
        locality=Locality("eu", "eu-1a"),
        node_metadata={"NAMESPACE": "shop"},
    )


@pytest.fixture(params=["h2", "grpcio"])
async def make_client(request: Any) -> AsyncIterator[Callable[..., XdsClient]]:
    """Clients over grpc_wire (h2) and over grpcio: the same stream logic."""
    clients: list[XdsClient] = []

    def make(uri: str, **kw: Any) -> XdsClient:
        kw.setdefault("on_update", lambda state: None)
        kw.setdefault("transport", request.param)
        client = XdsClient(bootstrap(uri), **kw)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def names(req: Any) -> list[str]:
    return list(req.resource_names)


async def resolve_all(stream: ServerStream) -> None:
    """Walk a fresh stream from LDS to EDS: p.mesh:80 -> r1 -> {c1 (svc1), c2}."""
    req = await stream.request(LDS)
    assert names(req) == ["p.mesh:80"]
    stream.respond(LDS, "1", listener("p.mesh:80", "r1"))
    ack = await stream.request(LDS)
    assert (ack.version_info, ack.response_nonce) == ("1", "n1")
    assert names(await stream.request(RDS)) == ["r1"]
    stream.respond(RDS, "1", routes("r1", {"c1": 80, "c2": 20}))
    await stream.request(RDS)
    assert names(await stream.request(CDS)) == ["c1", "c2"]
    stream.respond(CDS, "1", cluster("c1", "svc1"), cluster("c2"))
    await stream.request(CDS)
    assert names(await stream.request(EDS)) == ["c2", "svc1"]
    stream.respond(EDS, "1", assignment("svc1", 8080), assignment("c2", 9090))
    ack = await stream.request(EDS)
    assert (ack.version_info, ack.response_nonce, ack.HasField("error_detail")) == (
        "1",
        "n4",
        False,
    )


# -- tests ---------------------------------------------------------------------------


async def test_follows_lds_rds_cds_eds_and_watch_returns_when_resolved(
    ads: tuple[ScriptedAds, str], make_client: Callable[..., XdsClient]
) -> None:
    servicer, uri = ads
    updates: list[XdsState] = []
    client = make_client(uri, on_update=updates.append, user_agent_name="test-agent")
    await client.start()
    watch = asyncio.create_task(client.watch(["p.mesh:80"], timeout=STEP))
    stream = await servicer.next_stream()

    first = await stream.request(LDS)
    node = first.node
    assert (node.id, node.cluster, node.user_agent_name) == ("node-1", "reviews", "test-agent")
    assert node.user_agent_version
    assert (node.locality.region, node.locality.zone) == ("eu", "eu-1a")
    assert json_format.MessageToDict(node.metadata) == {"NAMESPACE": "shop"}
    assert list(node.client_features) == [
        "envoy.lb.does_not_support_overprovisioning",
        "xds.config.resource-in-sotw",
    ]
    assert (first.version_info, first.response_nonce) == ("", "")
    stream.requests.put_nowait(first)  # let resolve_all see it too

    await asyncio.wait_for(_resolve_with_watch(stream, watch), STEP)
    state = client.state
    assert state.is_resolved("p.mesh:80")
    assert state.route_config_for("p.mesh:80") == state.route_configs["r1"]
    assert state.clusters["c1"].eds_service_name == "svc1"
    assert set(state.assignments) == {"svc1", "c2"}
    assert updates[-1] is state
    assert client.connected
    statuses = {(s.type_url, s.name): s for s in client.resource_status()}
    assert statuses[(CDS, "c2")].status is ClientStatus.ACKED
    assert statuses[(EDS, "svc1")].version == "1"


async def _resolve_with_watch(stream: ServerStream, watch: asyncio.Task[None]) -> None:
    await resolve_all(stream)
    await watch
    # Only the first request of the stream carries the node.
    assert stream.requests.empty()


async def test_node_only_on_first_request(
    ads: tuple[ScriptedAds, str], make_client: Callable[..., XdsClient]
) -> None:
    servicer, uri = ads
    client = make_client(uri)
    await client.start()
    watch = asyncio.create_task(client.watch(["p.mesh:80"], timeout=STEP))
    stream = await servicer.next_stream()
    seen: list[Any] = []
    original = stream.request

    async def recording(type_url: str | None = None) -> Any:
        req = await original(type_url)
        seen.append(req)
        return req

    stream.request = recording  # type: ignore[method-assign]
    await resolve_all(stream)
    await watch
    assert [r.HasField("node") for r in seen] == [True] + [False] * (len(seen) - 1)


async def test_nack_keeps_good_sibling_and_last_good_value(
    ads: tuple[ScriptedAds, str], make_client: Callable[..., XdsClient]
) -> None:
    servicer, uri = ads
    client = make_client(uri)
    await client.start()
    watch = asyncio.create_task(client.watch(["p.mesh:80"], timeout=STEP))
    stream = await servicer.next_stream()
    await resolve_all(stream)
    await watch
    old_c2 = client.state.clusters["c2"]

    bad = cluster_pb2.Cluster(name="c2", type=cluster_pb2.Cluster.STATIC)
    nonce = stream.respond(CDS, "2", cluster("c1", "svc1", cluster_pb2.Cluster.LEAST_REQUEST), bad)
    nack = await stream.request(CDS)
    assert nack.version_info == "1"  # the last ACKed version
    assert nack.response_nonce == nonce
    assert nack.error_detail.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert nack.error_detail.message == "c2: discovery type STATIC is not supported (only EDS)"
    assert names(nack) == ["c1", "c2"]

    state = client.state
    assert state.clusters["c1"].lb_policy is LbPolicy.LEAST_REQUEST  # sibling applied
    assert state.clusters["c2"] == old_c2  # last good value kept
    status = {s.name: s for s in client.resource_status() if s.type_url == CDS}
    assert status["c2"].status is ClientStatus.NACKED
    assert (status["c2"].version, status["c2"].error_version) == ("1", "2")
    assert status["c1"].status is ClientStatus.ACKED and status["c1"].version == "2"

    # A later good version is ACKed and clears the error.
    stream.respond(CDS, "3", cluster("c1", "svc1"), cluster("c2"))
    ack = await stream.request(CDS)
    assert (ack.version_info, ack.HasField("error_detail")) == ("3", False)
    assert all(s.status is ClientStatus.ACKED for s in client.resource_status())


async def test_absent_listener_resolves_watch_promptly(
    ads: tuple[ScriptedAds, str], make_client: Callable[..., XdsClient]
) -> None:
    servicer, uri = ads
    client = make_client(uri)
    await client.start()
    watch = asyncio.create_task(client.watch(["nope.mesh:80"], timeout=STEP))
    stream = await servicer.next_stream()
    assert names(await stream.request(LDS)) == ["nope.mesh:80"]
    stream.respond(LDS, "1", listener("other.mesh:80", "r9"))  # not ours: ignored
    await asyncio.wait_for(watch, STEP)
    assert client.state.absent_listeners == frozenset({"nope.mesh:80"})
    assert client.state.is_resolved("nope.mesh:80")
    assert client.state.listeners == {}
    (status,) = client.resource_status()
    assert status.status is ClientStatus.DOES_NOT_EXIST
    ack = await stream.request(LDS)
    assert ack.version_info == "1"
    assert stream.requests.empty()  # nothing to follow: no RDS subscription


async def test_reconnects_and_resubscribes_keeping_state(
    ads: tuple[ScriptedAds, str], make_client: Callable[..., XdsClient]
) -> None:
    servicer, uri = ads
    gate = Gate()
    client = make_client(uri, sleep=gate)
    await client.start()
    watch = asyncio.create_task(client.watch(["p.mesh:80"], timeout=STEP))
    stream = await servicer.next_stream()
    await resolve_all(stream)
    await watch
    state = client.state

    gate.open.clear()
    stream.close()
    await asyncio.wait_for(gate.sleeping.wait(), STEP)
    assert not client.connected
    assert client.state is state  # traffic goes on with the last good config
    assert len(gate.delays) == 1 and 0 < gate.delays[0] <= 10

    gate.open.set()
    stream = await servicer.next_stream()
    got = [await stream.request() for _ in range(4)]
    assert [r.type_url for r in got] == [LDS, RDS, CDS, EDS]
    assert [names(r) for r in got] == [["p.mesh:80"], ["r1"], ["c1", "c2"], ["c2", "svc1"]]
    assert all(r.version_info == "1" and r.response_nonce == "" for r in got)
    assert got[0].HasField("node") and not any(r.HasField("node") for r in got[1:])
    await client.wait_connected(STEP)
    assert client.state is state

    # The new stream works: an update is applied and ACKed with the new nonce.
    nonce = stream.respond(EDS, "2", assignment("svc1", 8081), assignment("c2", 9090))
    ack = await stream.request(EDS)
    assert (ack.version_info, ack.response_nonce) == ("2", nonce)
    port = client.state.assignments["svc1"].localities[0].endpoints[0].port
    assert port == 8081


async def test_unsubscribes_when_route_stops_referencing_cluster(
    ads: tuple[ScriptedAds, str], make_client: Callable[..., XdsClient]
) -> None:
    servicer, uri = ads
    updates: list[XdsState] = []
    client = make_client(uri, on_update=updates.append)
    await client.start()
    watch = asyncio.create_task(client.watch(["p.mesh:80"], timeout=STEP))
    stream = await servicer.next_stream()
    await resolve_all(stream)
    await watch

    stream.respond(RDS, "2", routes("r1", {"c1": 100, "c2": 0}))  # weight 0: dropped
    ack = await stream.request(RDS)
    assert ack.version_info == "2"
    cds = await stream.request(CDS)
    assert (names(cds), cds.version_info, cds.response_nonce) == (["c1"], "1", "n3")
    eds = await stream.request(EDS)
    assert (names(eds), eds.version_info, eds.response_nonce) == (["svc1"], "1", "n4")
    state = client.state
    assert set(state.clusters) == {"c1"}
    assert set(state.assignments) == {"svc1"}
    assert updates[-1] is state and state.is_resolved("p.mesh:80")

    # unwatch drops the whole chain: every type is unsubscribed.
    client.unwatch(["p.mesh:80"])
    got = [await stream.request() for _ in range(4)]
    assert [(r.type_url, names(r)) for r in got] == [(LDS, []), (RDS, []), (CDS, []), (EDS, [])]
    assert client.state.listeners == {} and client.state.clusters == {}
    assert client.resource_status() == []


async def test_watch_timeout_names_server_and_missing_resources(
    ads: tuple[ScriptedAds, str], make_client: Callable[..., XdsClient]
) -> None:
    servicer, uri = ads
    client = make_client(uri)
    await client.start()
    watch = asyncio.create_task(client.watch(["p.mesh:80", "q.mesh:80"], timeout=1.0))
    stream = await servicer.next_stream()
    assert names(await stream.request(LDS)) == ["p.mesh:80", "q.mesh:80"]
    stream.respond(LDS, "1", listener("p.mesh:80", "r1"))  # q is absent; r1 never comes
    with pytest.raises(ControlPlaneUnavailableError) as info:
        await watch
    msg = str(info.value)
    assert msg.startswith(f"xDS server {uri} did not resolve within 1s: ")
    assert "p.mesh:80 (missing route configuration 'r1')" in msg
    assert "q.mesh:80" not in msg


async def test_wait_connected_timeout_without_server(
    make_client: Callable[..., XdsClient],
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        uri = f"127.0.0.1:{s.getsockname()[1]}"
    gate = Gate()
    gate.open.clear()  # hold the client in its first backoff sleep
    client = make_client(uri, sleep=gate)
    await client.start()
    with pytest.raises(ControlPlaneUnavailableError) as info:
        await client.wait_connected(0.5)
    assert str(info.value).startswith(f"no ADS stream to xDS server {uri} after 0.5s (last error: ")
    assert "UNAVAILABLE" in str(info.value)
    assert not client.connected
    assert len(gate.delays) == 1  # the failed attempt went into backoff


async def test_unrequested_type_is_nacked_and_on_update_errors_are_contained(
    ads: tuple[ScriptedAds, str], make_client: Callable[..., XdsClient]
) -> None:
    servicer, uri = ads

    def broken(state: XdsState) -> None:
        raise RuntimeError("bug in the layer above")

    client = make_client(uri, on_update=broken)
    await client.start()
    watch = asyncio.create_task(client.watch(["nope.mesh:80"], timeout=STEP))
    stream = await servicer.next_stream()
    await stream.request(LDS)
    nonce = stream.respond(CDS, "7", cluster("c1"))
    nack = await stream.request(CDS)
    assert nack.response_nonce == nonce and nack.version_info == ""
    assert f"type URL '{CDS}' was not requested" in nack.error_detail.message
    assert client.state.clusters == {}

    stream.respond(LDS, "1")  # on_update raises; the client carries on
    await asyncio.wait_for(watch, STEP)
    assert client.state.absent_listeners == {"nope.mesh:80"}
    await stream.request(LDS)


async def test_backoff_grows_while_failing_and_resets_after_a_response(
    ads: tuple[ScriptedAds, str], make_client: Callable[..., XdsClient]
) -> None:
    servicer, uri = ads
    gate = Gate()
    client = make_client(uri, sleep=gate, wait=lambda rs: float(rs.attempt_number))
    await client.start()
    watch = asyncio.create_task(client.watch(["nope.mesh:80"], timeout=STEP))
    for _ in range(2):  # two streams that end before any response
        stream = await servicer.next_stream()
        await stream.request(LDS)
        stream.close()
    stream = await servicer.next_stream()
    await stream.request(LDS)
    stream.respond(LDS, "1")
    await asyncio.wait_for(watch, STEP)
    await stream.request(LDS)
    stream.close()
    await servicer.next_stream()
    assert gate.delays == [1.0, 2.0, 1.0]


async def test_resource_wrapper_accepted_and_unnamed_garbage_nacked(
    ads: tuple[ScriptedAds, str], make_client: Callable[..., XdsClient]
) -> None:
    servicer, uri = ads
    client = make_client(uri)
    await client.start()
    watch = asyncio.create_task(client.watch(["p.mesh:80"], timeout=STEP))
    stream = await servicer.next_stream()
    await stream.request(LDS)
    garbage = any_pb2.Any(type_url=LDS, value=b"\xff\xff\xff")
    stream.respond(LDS, "1", garbage)
    nack = await stream.request(LDS)
    assert nack.error_detail.message.startswith("resource index 0: cannot parse Listener")
    # The unparseable resource might have been ours: nothing is declared absent.
    assert client.state.absent_listeners == frozenset()
    assert not watch.done()

    wrapped = discovery_pb2.Resource(name="p.mesh:80", resource=packed(listener("p.mesh:80", "r1")))
    stream.respond(LDS, "2", wrapped)  # the xds.config.resource-in-sotw form
    assert (await stream.request(LDS)).version_info == "2"
    assert names(await stream.request(RDS)) == ["r1"]
    assert client.state.listeners["p.mesh:80"].rds_name == "r1"
    watch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watch
