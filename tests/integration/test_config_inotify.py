"""A real control plane pushes a config file's change without waiting for its
poll: the poll interval is an hour, so only inotify explains the push."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from mesh_control_plane.app import ControlPlane
from mesh_control_plane.translate import CLUSTER

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
TIMEOUT = 10.0


def service(name: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\n"
        "kind: ServiceEntry\n"
        f"metadata: {{name: {name}, namespace: default}}\n"
        f"spec: {{hosts: [{name}.default.svc], location: MESH_INTERNAL, resolution: STATIC,\n"
        "  ports: [{number: 8080, name: http, protocol: HTTP}],\n"
        "  endpoints: [{address: 10.0.0.1}]}\n"
    )


def cluster_names(response: discovery_pb2.DiscoveryResponse) -> set[str]:
    names = set()
    for resource in response.resources:
        cluster = cluster_pb2.Cluster()
        resource.Unpack(cluster)
        names.add(cluster.name)
    return names


async def test_a_file_write_is_pushed_without_the_poll(tmp_path: Path) -> None:
    (tmp_path / "reviews.yaml").write_text(service("reviews"))
    plane = ControlPlane(tmp_path, poll_interval=3600.0)
    addresses = await plane.start("127.0.0.1:0", "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(addresses.xds) as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
            node = base_pb2.Node(id="web-1", user_agent_name="proxyless-mesh")
            await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER))
            first = await asyncio.wait_for(call.read(), TIMEOUT)
            assert any("reviews" in name for name in cluster_names(first))
            await call.write(
                discovery_pb2.DiscoveryRequest(
                    type_url=CLUSTER, version_info=first.version_info, response_nonce=first.nonce
                )
            )

            (tmp_path / "ratings.yaml").write_text(service("ratings"))
            # TIMEOUT is far below the hour-long poll
            second = await asyncio.wait_for(call.read(), TIMEOUT)
            call.cancel()
    finally:
        await plane.stop(grace=0)
    assert second.version_info != first.version_info
    assert any("ratings" in name for name in cluster_names(second))
