"""A real ADS server on 127.0.0.1:0 and stubs to it, for the xDS server tests.

`server` serves the module's own `cache` fixture (each module sets the config
it needs); `clients` collects the AdsClients a test opens and closes them all.
A module that defines its own `server` (a JWKS server, say) overrides this one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from mesh_control_plane.xds import SnapshotCache, XdsServer


@pytest.fixture
async def server(cache: SnapshotCache) -> AsyncIterator[XdsServer]:
    server = XdsServer(cache)
    await server.start("127.0.0.1:0")
    yield server
    await server.stop(grace=None)


@pytest.fixture
async def stub(server: XdsServer) -> AsyncIterator[ads_pb2_grpc.AggregatedDiscoveryServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)


@pytest.fixture
async def clients(
    stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub,
) -> AsyncIterator[list[Any]]:
    """Open clients with `clients.append(AdsClient(stub, id))`; all closed after,
    before the channel they share (hence the dependency on `stub`)."""
    opened: list[Any] = []
    yield opened
    for client in opened:
        await client.close()
