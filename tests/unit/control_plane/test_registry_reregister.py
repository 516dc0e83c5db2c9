"""Re-registration keeps the member's health (embedded registry).

A workload registers again when a server of it announces one more port after
start (port 0). Replacing the member would reset it to CONNECTING (left out of
EDS) or restart its probe (UNHEALTHY until it passes): the endpoint would flap
while it keeps answering. These tests watch every state the registry reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from mesh_control_plane.registry.embedded import (
    EmbeddedRegistry,
    MemberState,
    RegistrationRequest,
)
from mesh_control_plane.registry.workload_group import WorkloadGroup, parse_workload_group


def _verify(token: str) -> tuple[str, str]:
    namespace, _, sa = token.partition(":")
    return namespace, sa


def _group(name: str = "reviews", probe: dict[str, object] | None = None) -> WorkloadGroup:
    spec: dict[str, object] = {
        "metadata": {"labels": {"app": name}},
        "template": {"serviceAccount": "reviews", "ports": {"http": 9080}},
    }
    if probe is not None:
        spec["probe"] = probe
    return parse_workload_group(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadGroup",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": spec,
        }
    )


def _request(ports: dict[str, int], group: str = "shop/reviews") -> RegistrationRequest:
    return RegistrationRequest("n1", group, "127.0.0.1", ports=ports, token="shop:reviews")


class Seen:
    """Every (health, ports) the registry lists after each change."""

    def __init__(self, reg: EmbeddedRegistry) -> None:
        self.reg = reg
        self.states: list[tuple[str, dict[str, int]] | None] = []
        reg.on_change = self.record

    def record(self) -> None:
        listed = self.reg.instances()
        self.states.append(
            (listed[0].endpoint.health, dict(listed[0].endpoint.ports)) if listed else None
        )


async def test_reregistering_with_an_added_port_keeps_it_healthy() -> None:
    reg = EmbeddedRegistry(lambda: [_group()], _verify, grace=5)
    reg.register(_request({"http": 4001}))
    reg.stream_opened("n1")
    seen = Seen(reg)
    state = reg.register(_request({"http": 4001, "grpc": 4002}))
    assert state is MemberState.HEALTHY
    assert seen.states == [("HEALTHY", {"http": 4001, "grpc": 4002})]
    reg.close()


async def test_reregistering_does_not_restart_a_passing_probe() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    probe = {"tcpSocket": {"port": port}, "periodSeconds": 30}
    reg = EmbeddedRegistry(lambda: [_group(probe=probe)], _verify, grace=5)
    healthy = asyncio.Event()
    reg.on_change = lambda: healthy.set() if reg.state_of("n1") is MemberState.HEALTHY else None
    try:
        reg.register(_request({"http": 4001}))
        reg.stream_opened("n1")
        await asyncio.wait_for(healthy.wait(), 5)
        seen = Seen(reg)
        reg.register(_request({"http": 4001, "grpc": 4002}))
        # Without keeping the member, its probe would restart: UNHEALTHY for a period.
        assert seen.states == [("HEALTHY", {"http": 4001, "grpc": 4002})]
    finally:
        reg.close()
        server.close()
        await server.wait_closed()


async def test_a_disconnected_member_stays_unhealthy_and_still_expires() -> None:
    reg = EmbeddedRegistry(lambda: [_group()], _verify, grace=0.3)
    reg.register(_request({"http": 4001}))
    reg.stream_opened("n1")
    reg.stream_closed("n1")
    gone = asyncio.Event()
    seen = Seen(reg)
    reg.on_change = lambda: (seen.record(), gone.set() if reg.state_of("n1") is None else None)
    reg.register(_request({"http": 4001, "grpc": 4002}))
    assert reg.state_of("n1") is MemberState.UNHEALTHY
    await asyncio.wait_for(gone.wait(), 2)  # the grace timer of the first registration
    assert seen.states == [("UNHEALTHY", {"http": 4001, "grpc": 4002}), None]


@pytest.fixture
async def two_groups() -> AsyncIterator[EmbeddedRegistry]:
    reg = EmbeddedRegistry(lambda: [_group(), _group("ratings")], _verify, grace=5)
    yield reg
    reg.close()


async def test_another_group_or_a_drained_member_starts_afresh(
    two_groups: EmbeddedRegistry,
) -> None:
    reg = two_groups
    reg.register(_request({"http": 4001}))
    reg.stream_opened("n1")
    reg.register(_request({"http": 4001}, group="shop/ratings"))
    listed = reg.instances()
    assert [i.endpoint.labels["app"] for i in listed] == ["ratings"]
    reg.deregister("n1")
    assert reg.register(_request({"http": 4001}, group="shop/ratings")) is MemberState.HEALTHY
