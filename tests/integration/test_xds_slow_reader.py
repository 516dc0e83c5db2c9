"""A client that stops reading its ADS stream must not hold up anyone else.

A real ADS server on 127.0.0.1 and real grpcio clients. The "never reads"
client is a grpcio channel whose HTTP/2 stream window is tiny (1 KB of
lookahead, BDP probing off) and which never calls read(): the server's first
write to it blocks in flow control, exactly as with a frozen peer, without
waiting for megabytes of socket buffers to fill. Meanwhile an ordinary client
must get every one of the config changes, each as it happens, and the server
must close the stalled stream (queue bound), then forget it (its write stays
blocked), which it reports through the stream observer (the same hook that
ties self-registered workloads to their streams). When the stalled client
reads again, it finds its stream ended (UNAVAILABLE), so it would reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from mesh_control_plane.config.model import (
    MeshConfig,
    Meta,
    ServiceEntry,
    ServicePort,
    WorkloadEndpoint,
)
from mesh_control_plane.translate import ENDPOINT
from mesh_control_plane.xds import SnapshotCache, XdsServer
from mesh_control_plane.xds.server import DEFAULT_QUEUE_SIZE

pytestmark = pytest.mark.usefixtures("xds_engine")  # grpc.aio and the native engine

TIMEOUT = 10.0
CLUSTER = "outbound|80||big.mesh"
CHANGES = DEFAULT_QUEUE_SIZE + 30  # more than the slow stream's queue holds
# HTTP/2 stream window of 1 KB, never grown: a few hundred bytes get through.
NEVER_READS = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024))


def big_service(generation: int, count: int = 300) -> MeshConfig:
    """`count` endpoints (300: an EDS response of several KB); each generation moves them."""
    endpoints = tuple(
        WorkloadEndpoint(f"10.{generation % 250}.{i // 250}.{i % 250}", {"http": 80})
        for i in range(count)
    )
    entry = ServiceEntry(
        meta=Meta("ServiceEntry", "big", "default", "services.yaml"),
        hosts=("big.mesh",),
        ports=(ServicePort(80, "HTTP", "http"),),
        endpoints=endpoints,
    )
    return MeshConfig(service_entries=(entry,))


def first_address(response: discovery_pb2.DiscoveryResponse) -> str:
    [resource] = response.resources
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(resource.value)
    return str(cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address)


def subscribe(node_id: str) -> discovery_pb2.DiscoveryRequest:
    request = discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=[CLUSTER])
    request.node.CopyFrom(base_pb2.Node(id=node_id, user_agent_name="proxyless-mesh"))
    return request


class StreamEvents:
    """The server's stream observer: per node id, an event set when its stream
    identified itself (its subscription is in) and one set when it ended."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, bool], asyncio.Event] = {}

    def event(self, node_id: str, connected: bool) -> asyncio.Event:
        return self.events.setdefault((node_id, connected), asyncio.Event())

    async def wait(self, node_id: str, connected: bool) -> None:
        await asyncio.wait_for(self.event(node_id, connected).wait(), TIMEOUT)

    def __call__(self, node: base_pb2.Node, connected: bool) -> None:
        self.event(node.id, connected).set()


@pytest.fixture
def cache() -> SnapshotCache:
    cache = SnapshotCache()
    cache.set_config(big_service(0))
    return cache


@contextlib.asynccontextmanager
async def serving(cache: SnapshotCache, events: StreamEvents) -> AsyncIterator[XdsServer]:
    server = XdsServer(cache, observer=events, write_stall_grace=0.2)
    await server.start("127.0.0.1:0")
    try:
        yield server
    finally:
        await server.stop(grace=None)


@contextlib.asynccontextmanager
async def never_reading(port: int, events: StreamEvents) -> AsyncIterator[Any]:
    """The ADS call (grpc.aio's stubs lack its message types), subscribed."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=NEVER_READS) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(subscribe("slow"))
        await events.wait("slow", True)
        try:
            yield call
        finally:
            call.cancel()


async def push_until_forgotten(cache: SnapshotCache, events: StreamEvents) -> None:
    """Config changes until the server has ended the slow stream."""
    for generation in range(1, CHANGES + 1):
        cache.set_config(big_service(generation))
        await asyncio.sleep(0)  # a turn of the loop: the stream writers run between changes
    await events.wait("slow", False)


def ack(response: discovery_pb2.DiscoveryResponse) -> discovery_pb2.DiscoveryRequest:
    return discovery_pb2.DiscoveryRequest(
        type_url=ENDPOINT,
        resource_names=[CLUSTER],
        version_info=response.version_info,
        response_nonce=response.nonce,
    )


async def test_stalled_stream_is_dropped_and_others_get_every_change(
    cache: SnapshotCache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mesh_control_plane.xds.server")
    events = StreamEvents()
    async with (
        serving(cache, events) as server,
        never_reading(server.port, events),
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(subscribe("normal"))
        await call.write(ack(await asyncio.wait_for(call.read(), TIMEOUT)))
        received = []
        for generation in range(1, CHANGES + 1):
            cache.set_config(big_service(generation))
            # promptly: each change is in hand before the next one is made
            response = await asyncio.wait_for(call.read(), TIMEOUT)
            received.append(first_address(response))
            await call.write(ack(response))
        assert received == [f"10.{g}.0.0" for g in range(1, CHANGES + 1)]
        # bounded queue: closed after DEFAULT_QUEUE_SIZE unwritten responses,
        # then forgotten since its write never completes
        await events.wait("slow", False)
        messages = [r.getMessage() for r in caplog.records]
        assert any("closing ADS stream from slow: client too slow" in m for m in messages)
        assert any(
            "ADS stream from slow (ipv4:127.0.0.1:" in m and "does not read" in m for m in messages
        )
        assert [r.node_id for r in server.servicer.clients()] == ["normal"]
        call.cancel()


async def test_stalled_client_finds_its_stream_ended_when_it_reads_again(
    cache: SnapshotCache,
) -> None:
    """A paused process that resumes must not sit on a stream nobody feeds:
    reading again, it gets what was in flight and then the stream's end."""
    events = StreamEvents()
    async with serving(cache, events) as server, never_reading(server.port, events) as call:
        await push_until_forgotten(cache, events)
        assert not server.servicer.clients()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                await asyncio.wait_for(call.read(), TIMEOUT)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "client too slow" in str(ended.value.details())
