"""What the xDS port's transport must get right, on grpc.aio and on the native
engine (`--xds-engine native`, native_ads/), with real grpcio clients:

- a response bigger than HTTP/2's 64 KiB initial window arrives whole, also to
  a client whose stream window stays at 1 KB (hundreds of WINDOW_UPDATEs);
- a client process killed mid-stream (no HTTP/2 goodbye, only its socket
  closed by the kernel) is reported closed: the stream observer hears of it
  and the server forgets the client;
- a method the port does not serve is UNIMPLEMENTED, and the port still
  serves ADS after it.

The slow reader (bounded outbox, WRITE_STALL_GRACE) is test_xds_slow_reader.py,
which runs on both engines too.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from mesh_control_plane.config.model import (
    MeshConfig,
)
from mesh_control_plane.xds import SnapshotCache, XdsServer
from test_xds_slow_reader import (
    CLUSTER,
    NEVER_READS,
    TIMEOUT,
    StreamEvents,
    big_service,
    subscribe,
)

pytestmark = pytest.mark.usefixtures("xds_engine")

ENDPOINTS = 4000  # an EDS response of about 150 KB


def many_endpoints() -> MeshConfig:
    return big_service(0, ENDPOINTS)


@contextlib.asynccontextmanager
async def serving(events: StreamEvents) -> AsyncIterator[XdsServer]:
    cache = SnapshotCache()
    cache.set_config(many_endpoints())
    server = XdsServer(cache, observer=events)
    await server.start("127.0.0.1:0")
    try:
        yield server
    finally:
        await server.stop(grace=None)


@pytest.mark.parametrize("options", [(), NEVER_READS], ids=["default window", "1 KB window"])
async def test_response_bigger_than_the_window_arrives_whole(
    options: tuple[tuple[str, int], ...],
) -> None:
    events = StreamEvents()
    async with (
        serving(events) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=options) as channel,
    ):
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(subscribe("big"))
        response = await asyncio.wait_for(call.read(), TIMEOUT)
        assert response.ByteSize() > 2 * 65536
        [resource] = response.resources
        cla = endpoint_pb2.ClusterLoadAssignment.FromString(resource.value)
        endpoints = cla.endpoints[0].lb_endpoints
        addresses = {e.endpoint.address.socket_address.address for e in endpoints}
        assert addresses == {e.address for e in many_endpoints().service_entries[0].endpoints}
        call.cancel()


# A grpcio client in its own process: subscribes, says so, then waits forever.
VANISHING_CLIENT = f"""
import sys, threading
import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

def requests():
    request = discovery_pb2.DiscoveryRequest(
        type_url="type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        resource_names=[{CLUSTER!r}],
    )
    request.node.CopyFrom(base_pb2.Node(id="vanishing", user_agent_name="proxyless-mesh"))
    yield request
    threading.Event().wait()

channel = grpc.insecure_channel(sys.argv[1])
for response in ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
    requests()
):
    print("received", flush=True)
"""


async def test_killed_client_is_reported_closed() -> None:
    events = StreamEvents()
    async with serving(events) as server:
        client = subprocess.Popen(
            [sys.executable, "-c", VANISHING_CLIENT, f"127.0.0.1:{server.port}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            await events.wait("vanishing", True)
            assert client.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(client.stdout.readline), TIMEOUT)
            assert line == "received\n"
            assert [c.node_id for c in server.servicer.clients()] == ["vanishing"]
            client.kill()
            await events.wait("vanishing", False)
            assert server.servicer.clients() == []
        finally:
            client.kill()
            client.wait(TIMEOUT)


async def test_unknown_method_is_unimplemented_and_ads_still_served() -> None:
    events = StreamEvents()
    async with (
        serving(events) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        unknown = channel.unary_unary("/no.such.Service/Method")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await unknown(b"", timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(subscribe("after"))
        response: discovery_pb2.DiscoveryResponse = await asyncio.wait_for(call.read(), TIMEOUT)
        assert len(response.resources) == 1
        call.cancel()
