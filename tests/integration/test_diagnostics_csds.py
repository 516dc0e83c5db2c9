"""CSDS from a real Mesh: `Mesh(admin_address=...)` serves
envoy.service.status.v3.ClientStatusDiscoveryService, read with the generated
grpc stub and with `meshctl config-dump --csds`.

The xDS server is a small scripted one (real grpc.aio on 127.0.0.1:0) so the
test can make the client NACK an update, withhold a resource (REQUESTED) and
omit a listener (DOES_NOT_EXIST) on purpose.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.admin.v3 import config_dump_shared_pb2 as shared_pb2
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
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.protobuf import any_pb2
from mesh_control_plane.cli.main import main

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap, XdsServer
from proxyless_mesh.xds_client import ResourceType

LDS = ResourceType.LISTENER.type_url
RDS = ResourceType.ROUTE_CONFIGURATION.type_url
CDS = ResourceType.CLUSTER.type_url
EDS = ResourceType.CLUSTER_LOAD_ASSIGNMENT.type_url
ADS = config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource())
STEP = 5.0


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


def routes(name: str, cluster: str) -> Any:
    route = rc.Route(match=rc.RouteMatch(prefix="/"), route=rc.RouteAction(cluster=cluster))
    return route_pb2.RouteConfiguration(
        name=name, virtual_hosts=[rc.VirtualHost(name="vh", domains=["*"], routes=[route])]
    )


def cluster(name: str, kind: int = cluster_pb2.Cluster.EDS) -> Any:
    return cluster_pb2.Cluster(
        name=name,
        type=kind,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ADS),
    )


def assignment(name: str) -> Any:
    address = address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address="10.0.0.1", port_value=8080)
    )
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=address)
    )
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[endpoint], load_balancing_weight={"value": 1}
            )
        ],
    )


class AutoAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Answers each subscription with what `resources` holds for the names
    asked (a name it lacks is simply not sent); `push()` re-sends a type."""

    def __init__(self) -> None:
        self.version = 1
        self.resources: dict[str, dict[str, Any]] = {
            LDS: {
                "good.mesh:80": listener("good.mesh:80", "r1"),
                "pending.mesh:80": listener("pending.mesh:80", "r-pending"),
            },
            RDS: {"r1": routes("r1", "c1")},  # r-pending is withheld: stays REQUESTED
            CDS: {"c1": cluster("c1")},
            EDS: {"c1": assignment("c1")},
        }
        self.nacked = asyncio.Event()
        self.asked: dict[str, asyncio.Event] = {}
        self._subscribed: dict[str, list[str]] = {}
        self._outbox: asyncio.Queue[Any] | None = None
        self._nonce = 0

    def asked_for(self, name: str) -> asyncio.Event:
        return self.asked.setdefault(name, asyncio.Event())

    def push(self, type_url: str) -> None:
        self.version += 1
        self._respond(type_url)

    def _respond(self, type_url: str) -> None:
        if self._outbox is None:
            return
        self._nonce += 1
        by_name = self.resources[type_url]
        wanted = [n for n in self._subscribed.get(type_url, []) if n in by_name]
        self._outbox.put_nowait(
            discovery_pb2.DiscoveryResponse(
                type_url=type_url,
                version_info=str(self.version),
                nonce=str(self._nonce),
                resources=[packed(by_name[n]) for n in wanted],
            )
        )

    async def StreamAggregatedResources(  # gRPC method name
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._outbox = outbox

        async def read() -> None:
            async for request in request_iterator:
                if request.HasField("error_detail"):
                    self.nacked.set()
                for name in request.resource_names:
                    self.asked_for(name).set()
                names = sorted(request.resource_names)
                if not request.response_nonce or names != self._subscribed.get(request.type_url):
                    self._subscribed[request.type_url] = names
                    self._respond(request.type_url)

        reader = asyncio.create_task(read())
        try:
            while True:
                yield await outbox.get()
        finally:
            reader.cancel()


@pytest.fixture
async def ads() -> AsyncIterator[tuple[AutoAds, str]]:
    servicer = AutoAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def fetch(address: str) -> dict[tuple[str, str], Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        response = await stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=STEP)
    [config] = response.config
    assert config.node.id == "csds-node"
    assert config.node.user_agent_name == "proxyless-mesh"
    return {(c.type_url, c.name): c for c in config.generic_xds_configs}


def status_name(entry: Any) -> str:
    return str(shared_pb2.ClientResourceStatus.Name(entry.client_status))


async def test_csds_reports_acked_nacked_requested_and_does_not_exist(
    ads: tuple[AutoAds, str],
) -> None:
    servicer, uri = ads
    bootstrap = Bootstrap(xds_servers=(XdsServer(uri),), node_id="csds-node")
    async with Mesh(
        bootstrap, admin_address="127.0.0.1:0", preload=["good.mesh:80", "gone.mesh:80"]
    ) as mesh:
        assert mesh.diagnostics is not None
        address = mesh.diagnostics.address
        pending = asyncio.create_task(mesh.xds.watch(["pending.mesh:80"], timeout=None))
        try:
            await asyncio.wait_for(servicer.asked_for("r-pending").wait(), STEP)
            first = await fetch(address)

            servicer.resources[CDS]["c1"] = cluster("c1", cluster_pb2.Cluster.STATIC)
            servicer.push(CDS)
            await asyncio.wait_for(servicer.nacked.wait(), STEP)
            second = await fetch(address)

            dump = await asyncio.to_thread(
                main, ["config-dump", "csds-node", "--csds", address, "--json"]
            )
            assert dump == 0
        finally:
            pending.cancel()

    assert {k: status_name(v) for k, v in first.items()} == {
        (LDS, "good.mesh:80"): "ACKED",
        (LDS, "gone.mesh:80"): "DOES_NOT_EXIST",
        (LDS, "pending.mesh:80"): "ACKED",
        (RDS, "r1"): "ACKED",
        (RDS, "r-pending"): "REQUESTED",
        (CDS, "c1"): "ACKED",
        (EDS, "c1"): "ACKED",
    }
    good = listener_pb2.Listener()
    assert first[(LDS, "good.mesh:80")].xds_config.Unpack(good)
    assert good == listener("good.mesh:80", "r1")
    assert first[(CDS, "c1")].version_info == "1"
    assert not first[(RDS, "r-pending")].HasField("xds_config")

    nacked = second[(CDS, "c1")]
    assert status_name(nacked) == "NACKED"
    assert nacked.version_info == "1"  # the last good value is still in use...
    kept = cluster_pb2.Cluster()
    assert nacked.xds_config.Unpack(kept)
    assert kept.type == cluster_pb2.Cluster.EDS  # ...and shown, not the rejected one
    assert nacked.error_state.version_info == "2"
    assert "STATIC" in nacked.error_state.details
    assert status_name(second[(EDS, "c1")]) == "ACKED"


async def test_config_dump_renders_csds(
    ads: tuple[AutoAds, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, uri = ads
    bootstrap = Bootstrap(xds_servers=(XdsServer(uri),), node_id="csds-node")
    async with Mesh(bootstrap, admin_address="127.0.0.1:0", preload=["good.mesh:80"]) as mesh:
        assert mesh.diagnostics is not None
        address = mesh.diagnostics.address
        code = await asyncio.to_thread(main, ["config-dump", "csds-node", "--csds", address])
        wrong = await asyncio.to_thread(main, ["config-dump", "other", "--csds", address])
    out, err = capsys.readouterr()
    assert code == 0
    assert out == (
        f"node csds-node (from CSDS at {address})\n"
        "TYPE  NAME          VERSION  STATUS  ERROR\n"
        "LDS   good.mesh:80  1        ACKED\n"
        "RDS   r1            1        ACKED\n"
        "CDS   c1            1        ACKED\n"
        "EDS   c1            1        ACKED\n"
    )
    assert wrong == 1
    assert "is node 'csds-node', not 'other'" in err


async def test_no_admin_endpoint_unless_asked(ads: tuple[AutoAds, str]) -> None:
    _, uri = ads
    bootstrap = Bootstrap(xds_servers=(XdsServer(uri),), node_id="csds-node")
    async with Mesh(bootstrap) as mesh:
        assert mesh.diagnostics is None
