"""ConsulRegistration waits for the port its server announces (port 0 / None).

py-consul talks HTTP to the Consul double (tests/consul_double.py, Consul's
documented agent API) on 127.0.0.1. The Mesh is a real, unstarted one: ports
announced before start are in `mesh.announced_ports`; later announcements are
delivered as a started Mesh does (`port_announced` on its loop). Under test:
when the service is put in Consul, with which port, and the TTL check's life.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap, make_bootstrap_json
from proxyless_mesh.registration import ConsulRegistration, PortAnnouncements, RegistrationError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from consul_double import ConsulDouble


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    consul = ConsulDouble()
    consul.start()
    try:
        yield consul
    finally:
        consul.close()


@pytest.fixture
def mesh() -> Mesh:
    bootstrap = make_bootstrap_json(
        server_uri="127.0.0.1:1", node_id="web-1", namespace="shop", service_account="web"
    )
    return Mesh(Bootstrap.from_json(bootstrap))


def registration(double: ConsulDouble, **options: object) -> ConsulRegistration:
    options.setdefault("port", 0)
    return ConsulRegistration(
        "web",
        consul_address=f"127.0.0.1:{double.port}",
        service_id="web-1",
        ttl=0.6,
        **options,  # type: ignore[arg-type]
    )


def registers(double: ConsulDouble) -> list[str]:
    return [r for r in double.requests if "/agent/service/register" in r]


def passes(double: ConsulDouble) -> int:
    return sum("/agent/check/pass/service:web-1" in r for r in double.requests)


async def test_port_zero_registers_at_the_announcement_and_keeps_the_check_passing(
    double: ConsulDouble, mesh: Mesh
) -> None:
    reg = registration(double)
    assert isinstance(reg, PortAnnouncements)  # what Mesh delivers announcements to
    await reg.start(mesh)
    try:
        assert reg.awaited == "*" and reg.registered_port is None
        assert registers(double) == [] and double.instances == {}
        await reg.port_announced(mesh, "http", 41234)
        instance = double.instances["web-1"]
        assert (instance.port, instance.status) == (41234, "passing")
        assert reg.registered_port == 41234 and reg.awaited is None
        # The heartbeat started with the registration: the check outlives its TTL.
        before = passes(double)

        async def beats() -> None:
            while passes(double) < before + 3:  # three beats: more than one TTL
                await asyncio.sleep(0.05)

        await asyncio.wait_for(beats(), 5)
        assert double.instances["web-1"].status == "passing"
    finally:
        await reg.stop()
    assert double.instances == {}


async def test_port_announced_before_start_registers_on_start(
    double: ConsulDouble, mesh: Mesh
) -> None:
    mesh.announce_port("http", 40001)  # unstarted mesh: kept for the registrars
    reg = registration(double, port=None)
    await reg.start(mesh)
    try:
        assert double.instances["web-1"].port == 40001
        assert len(registers(double)) == 1
    finally:
        await reg.stop()


async def test_port_name_picks_the_announcement(double: ConsulDouble, mesh: Mesh) -> None:
    reg = registration(double, port_name="grpc")
    await reg.start(mesh)
    try:
        await reg.port_announced(mesh, "http", 40002)
        assert double.instances == {} and reg.awaited == "grpc"
        await reg.port_announced(mesh, "grpc", 40003)
        assert double.instances["web-1"].port == 40003
    finally:
        await reg.stop()


async def test_reannounced_port_re_registers_other_names_ignored(
    double: ConsulDouble, mesh: Mesh
) -> None:
    reg = registration(double)
    await reg.start(mesh)
    try:
        await reg.port_announced(mesh, "http", 40004)
        await reg.port_announced(mesh, "grpc", 40005)  # port_name=None: first name kept
        await reg.port_announced(mesh, "http", 40004)  # unchanged: no new register
        assert double.instances["web-1"].port == 40004 and len(registers(double)) == 1
        await reg.port_announced(mesh, "http", 40006)  # the server came back elsewhere
        instance = double.instances["web-1"]
        assert (instance.port, instance.status) == (40006, "passing")
        assert len(registers(double)) == 2
    finally:
        await reg.stop()


async def test_explicit_port_registers_on_start_and_ignores_announcements(
    double: ConsulDouble, mesh: Mesh
) -> None:
    reg = registration(double, port=8080)
    await reg.start(mesh)
    try:
        assert double.instances["web-1"].port == 8080
        await reg.port_announced(mesh, "http", 40007)
        assert double.instances["web-1"].port == 8080 and len(registers(double)) == 1
    finally:
        await reg.stop()


async def test_stop_before_the_announcement_touches_nothing(
    double: ConsulDouble, mesh: Mesh
) -> None:
    reg = registration(double)
    await reg.start(mesh)
    await reg.stop()
    assert double.requests == []
    await reg.port_announced(mesh, "http", 40008)  # after stop: nothing to register with
    assert double.requests == []


async def test_refused_deferred_registration_raises_at_the_announcement(mesh: Mesh) -> None:
    consul = ConsulDouble(token="secret")
    consul.start()
    try:
        reg = registration(consul)
        await reg.start(mesh)  # nothing sent yet: the refusal comes with the port
        with pytest.raises(RegistrationError, match="refused to register web"):
            await reg.port_announced(mesh, "http", 40009)
        assert consul.instances == {} and reg.registered_port is None
        await reg.stop()
        assert not any("deregister" in r for r in consul.requests)
    finally:
        consul.close()


@pytest.mark.parametrize("options", [{"port": 70000}, {"port": -1}, {"port_name": ""}])
def test_bad_port_or_name_is_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ConsulRegistration("web", **options)  # type: ignore[arg-type]
