"""The ADS server driven over a real gRPC stream on 127.0.0.1, request by request.

"Nothing was sent" is proven with a barrier rather than a timeout: the client
then makes a request that must be answered, and the next response it reads
must be that answer. The server handles a stream's requests in order and
queues pushes synchronously, so anything sent earlier would arrive first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from mesh_control_plane.config.model import (
    Destination,
    HTTPRoute,
    HTTPRouteDestination,
    MeshConfig,
    Meta,
    ServiceEntry,
    ServicePort,
    VirtualService,
    WorkloadEndpoint,
)
from mesh_control_plane.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE
from mesh_control_plane.xds import SnapshotCache, XdsServer

pytestmark = pytest.mark.usefixtures("xds_engine")  # grpc.aio and the native engine

TIMEOUT = 5.0


def service(host: str, port: int, *addresses: str) -> ServiceEntry:
    return ServiceEntry(
        meta=Meta("ServiceEntry", host.split(".")[0], "default", "services.yaml"),
        hosts=(host,),
        ports=(ServicePort(port, "HTTP", "http"),),
        endpoints=tuple(WorkloadEndpoint(a, {"http": port}) for a in addresses),
    )


def route_to(host: str, destination: str) -> VirtualService:
    return VirtualService(
        meta=Meta("VirtualService", host.split(".")[0], "default", "routes.yaml"),
        hosts=(host,),
        http=(HTTPRoute(route=(HTTPRouteDestination(Destination(destination)),)),),
    )


A, B = service("a.mesh", 80, "10.0.0.1"), service("b.mesh", 80, "10.0.0.2")
A_CLUSTER, B_CLUSTER = "outbound|80||a.mesh", "outbound|80||b.mesh"


class AdsClient:
    """One scripted ADS stream; responses are read in the background into a queue."""

    def __init__(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, node_id: str) -> None:
        self.node = base_pb2.Node(id=node_id, user_agent_name="proxyless-mesh")
        self.call = self.open(stub)
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())
        self._first = True

    def open(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> Any:
        return stub.StreamAggregatedResources()

    async def _read(self) -> None:
        while (response := await self.call.read()) is not grpc.aio.EOF:
            await self.responses.put(response)

    async def send(
        self,
        type_url: str,
        names: Iterable[str] = (),
        *,
        ack: discovery_pb2.DiscoveryResponse | None = None,
        nonce: str | None = None,
        error: str | None = None,
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names))
        if self._first:
            request.node.CopyFrom(self.node)
            self._first = False
        if ack is not None:
            request.version_info, request.response_nonce = ack.version_info, ack.nonce
        if nonce is not None:
            request.response_nonce = nonce
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(request)

    async def recv(self) -> discovery_pb2.DiscoveryResponse:
        return await asyncio.wait_for(self.responses.get(), TIMEOUT)

    async def close(self) -> None:
        self.call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


MESSAGES = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
}


def names_in(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    """The resource names a response carries, in order."""
    out = []
    for any_msg in response.resources:
        msg = MESSAGES[any_msg.type_url].FromString(any_msg.value)
        out.append(msg.cluster_name if any_msg.type_url == ENDPOINT else msg.name)
    return out


@pytest.fixture
async def cache() -> SnapshotCache:
    cache = SnapshotCache()
    cache.set_config(MeshConfig(service_entries=(A, B)))
    return cache


async def test_named_listener_subscription_is_answered(stub, clients) -> None:
    client = AdsClient(stub, "n1")
    clients.append(client)
    await client.send(LISTENER, ["a.mesh:80"])
    response = await client.recv()
    assert response.type_url == LISTENER
    assert response.version_info == "1"
    assert response.nonce
    assert names_in(response) == ["a.mesh:80"]


async def test_subscription_change_at_same_version_is_answered(stub, clients) -> None:
    client = AdsClient(stub, "n1")
    clients.append(client)
    await client.send(LISTENER, ["a.mesh:80"])
    first = await client.recv()
    await client.send(LISTENER, ["a.mesh:80", "b.mesh:80"], ack=first)
    second = await client.recv()
    assert second.version_info == first.version_info
    assert second.nonce != first.nonce
    assert sorted(names_in(second)) == ["a.mesh:80", "b.mesh:80"]


async def test_request_with_stale_nonce_is_ignored(stub, clients) -> None:
    client = AdsClient(stub, "n1")
    clients.append(client)
    await client.send(CLUSTER, [A_CLUSTER])
    first = await client.recv()
    await client.send(CLUSTER, [A_CLUSTER, B_CLUSTER], nonce="not-the-latest")
    await client.send(CLUSTER, [B_CLUSTER], ack=first)  # barrier: must be answered
    answer = await client.recv()
    assert names_in(answer) == [B_CLUSTER]


async def test_ack_and_nack_are_recorded_for_status(stub, clients, server) -> None:
    client = AdsClient(stub, "n1")
    clients.append(client)
    await client.send(LISTENER, ["a.mesh:80"])
    response = await client.recv()
    await client.send(LISTENER, ["a.mesh:80"], ack=response, error="bad listener")
    await client.send(CLUSTER, [A_CLUSTER])  # barrier: the NACK caused no resend
    assert (await client.recv()).type_url == CLUSTER

    [record] = server.servicer.clients()
    assert (record.node_id, record.kind, record.user_agent) == ("n1", "MESH", "proxyless-mesh")
    assert record.peer.startswith("ipv4:127.0.0.1:")
    lds = record.to_status()["types"]["LDS"]
    assert lds == {
        "subscribed": ["a.mesh:80"],
        "sent": "1",
        "acked": "",
        "nacked": "1",
        "error": "bad listener",
    }
    assert record.to_status()["types"]["CDS"]["acked"] == ""

    # The client then accepts the same response after all (its nonce is still the latest).
    await client.send(LISTENER, ["a.mesh:80"], ack=response)
    await client.send(LISTENER, ["b.mesh:80"], ack=response)  # barrier
    assert names_in(await client.recv()) == ["b.mesh:80"]
    lds = record.to_status()["types"]["LDS"]
    assert (lds["acked"], lds["nacked"], lds["error"]) == ("1", None, None)


async def test_config_change_pushes_only_what_changed(stub, clients, cache) -> None:
    a_client, b_client = AdsClient(stub, "a"), AdsClient(stub, "b")
    clients += [a_client, b_client]
    await a_client.send(LISTENER, ["a.mesh:80"])
    a_lds = await a_client.recv()
    await a_client.send(ENDPOINT, [A_CLUSTER])
    a_eds = await a_client.recv()
    await b_client.send(LISTENER, ["b.mesh:80"])
    b_lds = await b_client.recv()
    for client, response in ((a_client, a_lds), (a_client, a_eds), (b_client, b_lds)):
        await client.send(response.type_url, names_in(response), ack=response)

    cache.set_config(MeshConfig(service_entries=(service("a.mesh", 80, "10.0.0.9"), B)))

    push = await a_client.recv()
    assert (push.type_url, push.version_info, names_in(push)) == (ENDPOINT, "2", [A_CLUSTER])
    await a_client.send(CLUSTER, [A_CLUSTER])  # barrier: no LDS push came before
    assert (await a_client.recv()).type_url == CLUSTER
    await b_client.send(CLUSTER, [B_CLUSTER])  # barrier: b got nothing at all
    assert (await b_client.recv()).type_url == CLUSTER


async def test_new_cluster_is_pushed_before_the_route_that_uses_it(stub, clients, cache) -> None:
    client = AdsClient(stub, "n1")
    clients.append(client)
    await client.send(ROUTE, ["a.mesh:80"])
    await client.send(CLUSTER, [])
    for _ in range(2):
        response = await client.recv()
        await client.send(
            response.type_url,
            names_in(response) if response.type_url == ROUTE else [],
            ack=response,
        )

    c = service("c.mesh", 80, "10.0.0.3")
    cache.set_config(
        MeshConfig(service_entries=(A, B, c), virtual_services=(route_to("a.mesh", "c.mesh"),))
    )

    first, second = await client.recv(), await client.recv()
    assert (first.type_url, second.type_url) == (CLUSTER, ROUTE)
    assert "outbound|80||c.mesh" in names_in(first)


async def test_wildcard_cluster_request_returns_all_clusters(stub, clients) -> None:
    client = AdsClient(stub, "n1")
    clients.append(client)
    await client.send(CLUSTER, [])
    response = await client.recv()
    assert sorted(names_in(response)) == [A_CLUSTER, B_CLUSTER]


async def test_unknown_names_get_a_prompt_empty_response(stub, clients) -> None:
    client = AdsClient(stub, "n1")
    clients.append(client)
    await client.send(LISTENER, ["nope.mesh:80"])
    response = await client.recv()
    assert (response.type_url, response.version_info, len(response.resources)) == (
        LISTENER,
        "1",
        0,
    )


async def test_slow_stream_is_closed_not_waited_for(cache: SnapshotCache) -> None:
    server = XdsServer(cache, queue_size=1)
    port = await server.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = AdsClient(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel), "slow")
            await client.send(CLUSTER, [])
            await client.recv()
            await client.send(ENDPOINT, [A_CLUSTER])
            await client.recv()
            # One change alters both the cluster list and a.mesh's endpoints: two
            # responses are queued at once, one more than the queue holds.
            c = service("c.mesh", 80, "10.0.0.3")
            cache.set_config(MeshConfig(service_entries=(service("a.mesh", 80, "10.0.0.9"), B, c)))
            assert await asyncio.wait_for(client.call.code(), TIMEOUT) in (
                grpc.StatusCode.UNAVAILABLE,
            )
            assert "too slow" in await client.call.details()
            await client.close()
    finally:
        await server.stop(grace=None)


async def test_bad_envoy_node_is_refused(stub, clients) -> None:
    client = AdsClient(stub, "envoy-1")
    clients.append(client)
    client.node.user_agent_name = "envoy"
    client.node.metadata.fields["OUTBOUND_PORT"].string_value = "not-a-port"
    await client.send(LISTENER, [])
    assert await asyncio.wait_for(client.call.code(), TIMEOUT) == grpc.StatusCode.INVALID_ARGUMENT
    assert "OUTBOUND_PORT" in await client.call.details()


async def test_closed_stream_is_forgotten(stub, server) -> None:
    client = AdsClient(stub, "n1")
    await client.send(LISTENER, ["a.mesh:80"])
    await client.recv()
    assert [r.node_id for r in server.servicer.clients()] == ["n1"]
    await client.call.done_writing()
    assert await asyncio.wait_for(client.call.code(), TIMEOUT) == grpc.StatusCode.OK
    assert server.servicer.clients() == []
    await client.close()


async def test_stop_ends_open_streams_without_waiting_out_the_grace(cache: SnapshotCache) -> None:
    server = XdsServer(cache)
    port = await server.start("127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = AdsClient(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel), "n1")
        await client.send(LISTENER, ["a.mesh:80"])
        await client.recv()
        await asyncio.wait_for(server.stop(grace=60), TIMEOUT)
        assert await asyncio.wait_for(client.call.code(), TIMEOUT) == grpc.StatusCode.UNAVAILABLE
        await client.close()


async def test_wildcard_then_names_then_empty_follows_sotw_rules(stub, clients) -> None:
    client = AdsClient(stub, "n1")
    clients.append(client)
    await client.send(CLUSTER, [])  # legacy wildcard
    everything = await client.recv()
    await client.send(CLUSTER, [A_CLUSTER], ack=everything)  # now by name
    named = await client.recv()
    assert names_in(named) == [A_CLUSTER]
    await client.send(CLUSTER, [], ack=named)  # after names, empty means none
    assert names_in(await client.recv()) == []
    await client.send(CLUSTER, ["*"])  # the explicit wildcard
    assert sorted(names_in(await client.recv())) == [A_CLUSTER, B_CLUSTER]
