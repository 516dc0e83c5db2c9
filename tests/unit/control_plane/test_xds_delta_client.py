"""The library's xDS client over Delta ADS, against the real control plane's
ADS server (in this process, on 127.0.0.1:0) and, for the NACK rule, the
sans-I/O protocol with hand-written responses.

A restart of the control plane is a new server (fresh state, counter back to
1) behind the same address: tests/relay.py, which also counts the bytes the
client receives after the switch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from mesh_control_plane.config.model import MeshConfig, ServiceEntry
from mesh_control_plane.xds import SnapshotCache, XdsServer
from relay import Relay
from test_xds_client import CDS, LDS, RDS, cluster, listener, packed, routes
from wire_support import read_requests

from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.bootstrap import XdsServer as BootstrapServer
from proxyless_mesh.errors import BootstrapError
from proxyless_mesh.xds_client import XdsClient
from proxyless_mesh.xds_client._delta import DeltaAdsProtocol

from .test_xds_server import service

pytestmark = pytest.mark.usefixtures("xds_engine")  # grpc.aio and the native engine

STEP = 10.0
HOSTS = [f"svc{i}.mesh" for i in range(8)]
LISTENERS = [f"{h}:80" for h in HOSTS]


def services(*, moved: str = "", dropped: str = "") -> MeshConfig:
    """Every host with one endpoint; `moved` gets another address, `dropped` none."""
    entries: list[ServiceEntry] = [
        service(h, 80, "10.0.9.9" if h == moved else "10.0.0.1") for h in HOSTS if h != dropped
    ]
    return MeshConfig(service_entries=tuple(entries))


def bootstrap(uri: str, ads: str) -> Bootstrap:
    return Bootstrap(
        xds_servers=(BootstrapServer(uri),),
        node_id=f"node-{ads}",
        proxyless_mesh={"ads": ads, "config_cache_path": ""},
    )


async def wait_until(check: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(STEP):
        while not check():
            await asyncio.sleep(0.02)
    assert check(), what


class ControlPlane:
    """A control plane's ADS server: started, stopped, replaced."""

    def __init__(self, config: MeshConfig) -> None:
        self.cache = SnapshotCache()
        self.cache.set_config(config)
        self.server = XdsServer(self.cache)

    async def start(self) -> str:
        return f"127.0.0.1:{await self.server.start('127.0.0.1:0')}"


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def serve(stack: AsyncExitStack, config: MeshConfig) -> tuple[ControlPlane, str]:
    plane = ControlPlane(config)
    address = await plane.start()
    stack.push_async_callback(plane.server.stop, None)
    return plane, address


async def follow(stack: AsyncExitStack, relay: Relay, ads: str) -> XdsClient:
    client = XdsClient(bootstrap(relay.address, ads), on_update=lambda state: None)
    await client.start()
    stack.push_async_callback(client.close)
    await client.watch(LISTENERS, timeout=STEP)
    return client


def endpoint_of(client: XdsClient, host: str) -> str:
    [assignment] = [a for n, a in client.state.assignments.items() if host in n]
    return assignment.localities[0].endpoints[0].address


async def test_restart_resumes_delta_with_what_changed_only(stack: AsyncExitStack) -> None:
    _, first = await serve(stack, services())
    relays = {ads: Relay(first) for ads in ("sotw", "delta")}
    for relay in relays.values():
        stack.callback(relay.close)
    clients = {ads: await follow(stack, relay, ads) for ads, relay in relays.items()}
    full = {ads: relay.to_client_bytes for ads, relay in relays.items()}

    # The control plane restarts with svc0 moved and svc7 gone.
    _, second = await serve(stack, services(moved="svc0.mesh", dropped="svc7.mesh"))
    for relay in relays.values():
        relay.point_at(second)
    for client in clients.values():
        await wait_until(
            lambda c=client: (
                endpoint_of(c, "svc0.mesh") == "10.0.9.9"  # type: ignore[misc]
                and "svc7.mesh:80" in c.state.absent_listeners
            ),
            "the change reached the client",
        )
    resumed = {ads: relay.to_client_bytes for ads, relay in relays.items()}

    # SotW re-sends every resource (about what the first connection took);
    # Delta sends svc0's endpoints and svc7's removal, and HTTP/2 framing.
    print(f"bytes to the client, first connection {full}, after the restart {resumed}")
    assert resumed["sotw"] > full["sotw"] / 2, (full, resumed)
    assert resumed["delta"] < resumed["sotw"] / 4, (full, resumed)
    assert endpoint_of(clients["delta"], "svc1.mesh") == "10.0.0.1"  # kept, not re-sent


async def test_removal_and_change_arrive_on_a_live_stream(stack: AsyncExitStack) -> None:
    plane, address = await serve(stack, services())
    relay = Relay(address)
    stack.callback(relay.close)
    client = await follow(stack, relay, "delta")
    plane.cache.set_config(services(moved="svc3.mesh", dropped="svc5.mesh"))
    await wait_until(
        lambda: (
            "svc5.mesh:80" in client.state.absent_listeners
            and endpoint_of(client, "svc3.mesh") == "10.0.9.9"
        ),
        "svc5 removed and svc3 moved",
    )
    [record] = plane.server.servicer.clients()
    assert record.delta and record.to_status()["protocol"] == "delta"
    types = record.to_status()["types"]
    assert {t: s["sent"] for t, s in types.items()} == dict.fromkeys(types, "2")
    assert sorted(types) == ["CDS", "EDS", "LDS", "RDS"]
    await wait_until(
        lambda: all(s["acked"] == s["sent"] for s in record.to_status()["types"].values()),
        "every type ACKed",
    )


async def test_unknown_host_is_known_absent_at_once(stack: AsyncExitStack) -> None:
    _, address = await serve(stack, services())
    relay = Relay(address)
    stack.callback(relay.close)
    client = await follow(stack, relay, "delta")
    await client.watch(["elsewhere.example.com:443"], timeout=1.0)  # not the 15 s timer
    assert "elsewhere.example.com:443" in client.state.absent_listeners


def test_bad_ads_setting_is_refused() -> None:
    with pytest.raises(BootstrapError, match="'sotw' or 'delta'"):
        XdsClient(bootstrap("127.0.0.1:1", "deltaa"), on_update=lambda state: None)


def delta_response(type_url: str, version: str, nonce: str, *resources: Any) -> Any:
    response = discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url, system_version_info=version, nonce=nonce
    )
    for name, res_version, msg in resources:
        response.resources.add(name=name, version=res_version, resource=packed(msg))
    return response


def test_nacked_resource_keeps_last_good_and_resumes_with_its_version() -> None:
    protocol = DeltaAdsProtocol({"id": "n1"})
    protocol.watch(["p.mesh:80"])
    [lds] = read_requests(protocol.start_stream(), delta=True)
    assert (list(lds.resource_names_subscribe), lds.node.id) == (["p.mesh:80"], "n1")
    steps = [
        delta_response(LDS, "1", "a", ("p.mesh:80", "l1", listener("p.mesh:80", "r1"))),
        delta_response(RDS, "1", "b", ("r1", "r1", routes("r1", {"c1": 100}))),
        delta_response(CDS, "1", "c", ("c1", "good", cluster("c1"))),
    ]
    for response in steps:
        ack = read_requests(protocol.handle_response(response).requests, delta=True)[0]
        assert ack.response_nonce == response.nonce
        assert not ack.HasField("error_detail")
    good = protocol.state.clusters["c1"]

    bad = cluster_pb2.Cluster(name="c1", type=cluster_pb2.Cluster.STATIC)
    outcome = protocol.handle_response(delta_response(CDS, "2", "d", ("c1", "bad", bad)))
    [nack] = read_requests(outcome.requests, delta=True)
    assert (nack.response_nonce, nack.error_detail.code) == ("d", 3)
    assert "STATIC" in nack.error_detail.message
    assert protocol.state.clusters["c1"] is good

    # A new stream asks for each type with the versions held: c1 at its last good one.
    protocol.end_stream()
    requests = {r.type_url: r for r in read_requests(protocol.start_stream(), delta=True)}
    assert dict(requests[CDS].initial_resource_versions) == {"c1": "good"}
    assert dict(requests[LDS].initial_resource_versions) == {"p.mesh:80": "l1"}

    # The server removes c1: it is known not to exist.
    removal = discovery_pb2.DeltaDiscoveryResponse(
        type_url=CDS, system_version_info="3", nonce="e", removed_resources=["c1"]
    )
    assert protocol.handle_response(removal).changed
    assert "c1" in protocol.state.absent_clusters and "c1" not in protocol.state.clusters
