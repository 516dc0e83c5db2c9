"""Registration waits for the ports its servers announce (port 0).

The control plane's real registration service and embedded registry run on a
grpc.aio server on 127.0.0.1; the library's `Registration` talks to it. Only the
mesh around the registration is a stand-in (its bootstrap, server URI and inbound
watch): what is under test is when Register is sent, and with which ports.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc.aio
import pytest
from mesh_control_plane.registry.embedded import (
    EmbeddedRegistry,
    MemberState,
    RegistrationRequest,
)
from mesh_control_plane.registry.workload_group import parse_workload_group
from mesh_control_plane.xds.registration import RegistrationService

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap, make_bootstrap_json
from proxyless_mesh.errors import RegistrationError
from proxyless_mesh.registration import Registration

GROUP = parse_workload_group(
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadGroup",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"template": {"serviceAccount": "reviews", "ports": {"http": 9080}}},
    }
)


def _verify(token: str) -> tuple[str, str]:
    namespace, _, sa = token.partition(":")
    return namespace, sa


class Recording(EmbeddedRegistry):
    def __init__(self) -> None:
        super().__init__(lambda: [GROUP], _verify, grace=5)
        self.registered: list[dict[str, int]] = []
        self.deregistered: list[str] = []

    def register(self, request: RegistrationRequest) -> MemberState:
        self.registered.append(dict(request.ports))
        return super().register(request)

    def deregister(self, node_id: str) -> bool:
        self.deregistered.append(node_id)
        return super().deregister(node_id)


@dataclass
class FakeXds:
    server_uri: str
    watched: list[str] = field(default_factory=list)

    async def watch_inbound(self, names: list[str], timeout: float) -> None:
        """Registration follows its own listeners as server listeners."""
        self.watched.extend(names)


@dataclass
class FakeMesh:
    """What Registration reads from a Mesh."""

    xds: FakeXds
    bootstrap: Bootstrap
    announced_ports: dict[str, int] = field(default_factory=dict)


@pytest.fixture
async def plane() -> AsyncIterator[tuple[Recording, FakeMesh]]:
    registry = Recording()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([RegistrationService(registry).handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        bootstrap = _bootstrap(f"127.0.0.1:{port}", token="shop:reviews")
        yield registry, FakeMesh(FakeXds(f"127.0.0.1:{port}"), bootstrap)
    finally:
        registry.close()
        await server.stop(None)


def _bootstrap(server_uri: str, token: str | None = None) -> Bootstrap:
    text = make_bootstrap_json(
        server_uri=server_uri,
        node_id="n1",
        namespace="shop",
        service_account="reviews",
        token=token,
    )
    return Bootstrap.from_json(text)


def _mesh(m: FakeMesh) -> Any:
    return m


async def test_named_ports_register_once_when_all_are_announced(
    plane: tuple[Recording, FakeMesh],
) -> None:
    registry, mesh = plane
    reg = Registration(group="shop/reviews", ports={"http": 0, "grpc": 0}, drain_seconds=0)
    await reg.start(_mesh(mesh))
    awaited = [reg.awaited]
    await reg.port_announced(_mesh(mesh), "http", 4001)
    awaited.append(reg.awaited)
    assert awaited == [("http", "grpc"), ("grpc",)] and registry.registered == []
    await reg.port_announced(_mesh(mesh), "grpc", 4002)
    await reg.port_announced(_mesh(mesh), "grpc", 4002)  # a repeat changes nothing
    await reg.port_announced(_mesh(mesh), "admin", 4003)  # not a declared name: ignored
    assert registry.registered == [{"http": 4001, "grpc": 4002}]
    assert reg.registered_ports == {"http": 4001, "grpc": 4002}
    assert registry.state_of("n1") is MemberState.CONNECTING
    await reg.stop()
    assert registry.deregistered == ["n1"]


async def test_no_ports_registers_at_the_first_and_adds_later_ones(
    plane: tuple[Recording, FakeMesh],
) -> None:
    registry, mesh = plane
    reg = Registration(group="shop/reviews", ports=None, drain_seconds=0)
    mesh.announced_ports["http"] = 4001  # announced before the registrar started
    await reg.start(_mesh(mesh))
    assert registry.registered == [{"http": 4001}]
    registry.stream_opened("n1")
    await reg.port_announced(_mesh(mesh), "grpc", 4002)
    assert registry.registered == [{"http": 4001}, {"http": 4001, "grpc": 4002}]
    assert registry.state_of("n1") is MemberState.HEALTHY
    assert [i.endpoint.ports["grpc"] for i in registry.instances()] == [4002]
    await reg.stop()


async def test_explicit_ports_ignore_announcements(plane: tuple[Recording, FakeMesh]) -> None:
    registry, mesh = plane
    reg = Registration(group="shop/reviews", ports={"http": 8080}, drain_seconds=0)
    await reg.start(_mesh(mesh))
    await reg.port_announced(_mesh(mesh), "http", 4001)
    assert registry.registered == [{"http": 8080}]
    await reg.stop()


async def test_a_registration_never_completed_is_not_deregistered(
    plane: tuple[Recording, FakeMesh],
) -> None:
    registry, mesh = plane
    reg = Registration(group="shop/reviews", ports={"http": 0}, drain_seconds=60)
    await reg.start(_mesh(mesh))
    await asyncio.wait_for(reg.stop(), 5)  # no drain wait either: nothing was listed
    assert registry.registered == [] and registry.deregistered == []


def test_bad_ports_are_refused() -> None:
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        Registration(group="shop/reviews", ports={"http": 70000})
    mesh = Mesh(_bootstrap("127.0.0.1:1"))
    try:
        with pytest.raises(ValueError, match=r"1\.\.65535"):
            mesh.announce_port("http", 0)
        with pytest.raises(ValueError, match="non-empty"):
            mesh.announce_port("", 80)
        # Not started: recorded for the registrars' start, nothing to wait for.
        assert mesh.announce_port("http", 4001).result(0) is None
        assert mesh.announced_ports == {"http": 4001}
    finally:
        mesh.close()


@dataclass
class HeldXds(FakeXds):
    """An inbound watch that ends when the test says the listener arrived."""

    watching: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def watch_inbound(self, names: list[str], timeout: float) -> None:
        self.watched.extend(names)
        self.watching.set()
        await self.arrived.wait()


async def test_a_registering_port_awaits_its_policy_until_its_listener_is_followed(
    plane: tuple[Recording, FakeMesh],
) -> None:
    """From Register until the inbound listener it makes is followed, the port
    is one whose policy is on its way (the mesh answers 503, not unchecked)."""
    registry, mesh = plane
    held = HeldXds(mesh.xds.server_uri)
    mesh.xds = held
    reg = Registration(group="shop/reviews", ports={"http": 0}, drain_seconds=0)
    await reg.start(_mesh(mesh))
    assert not reg.awaits_inbound_policy(4001)  # nothing announced, nothing sent
    registering = asyncio.create_task(reg.port_announced(_mesh(mesh), "http", 4001))
    await held.watching.wait()
    assert registry.registered == [{"http": 4001}]
    assert reg.awaits_inbound_policy(4001)
    assert not reg.awaits_inbound_policy(4002)
    held.arrived.set()
    await registering
    assert not reg.awaits_inbound_policy(4001)
    await reg.stop()


async def test_a_refused_registration_awaits_no_policy(plane: tuple[Recording, FakeMesh]) -> None:
    registry, mesh = plane
    mesh.bootstrap = _bootstrap(mesh.xds.server_uri, token="shop:ratings")  # another identity
    reg = Registration(group="shop/reviews", ports={"http": 4001}, drain_seconds=0)
    with pytest.raises(RegistrationError, match="refused"):
        await reg.start(_mesh(mesh))
    assert not reg.awaits_inbound_policy(4001)
    assert registry.registered == [{"http": 4001}]
