"""Backend-specific registry behaviour: identity checks and grace (embedded),
blocking-query semantics, ACL, staleness and host synthesis (Consul)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mesh_control_plane.cli.control_plane_cmd import registry_settings
from mesh_control_plane.cli.main import build_parser
from mesh_control_plane.config import MeshConfig
from mesh_control_plane.registry.consul import ConsulRegistry, ConsulSettings
from mesh_control_plane.registry.embedded import (
    EmbeddedRegistry,
    MemberState,
    RegistrationRefused,
    RegistrationRequest,
)
from mesh_control_plane.registry.hub import RegistryHub
from mesh_control_plane.registry.runtime import RegistryRuntime
from mesh_control_plane.registry.workload_group import (
    WorkloadGroupError,
    parse_workload_group,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from consul_double import ConsulDouble

GROUP_YAML = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "WorkloadGroup",
    "metadata": {"name": "reviews", "namespace": "shop"},
    "spec": {
        "metadata": {"labels": {"app": "reviews"}},
        "template": {"serviceAccount": "reviews", "ports": {"http": 9080}, "network": "n1"},
        "probe": {"httpGet": {"path": "/ready", "port": 9080}, "periodSeconds": 2},
    },
}


def test_workload_group_parses_istio_shape() -> None:
    group = parse_workload_group(GROUP_YAML, file="g.yaml")
    assert (group.ref, group.service_account, dict(group.ports)) == (
        "shop/reviews",
        "reviews",
        {"http": 9080},
    )
    assert group.probe is not None and (group.probe.kind, group.probe.path) == ("http", "/ready")


def test_workload_group_reports_every_problem() -> None:
    bad = {**GROUP_YAML, "spec": {"template": {"address": "1.2.3.4", "ports": {"http": "x"}}}}
    with pytest.raises(WorkloadGroupError) as err:
        parse_workload_group(bad, file="g.yaml")
    text = str(err.value)
    assert "spec.template.address" in text and "spec.template.ports" in text


def _verify(token: str) -> tuple[str, str]:
    namespace, _, sa = token.partition(":")
    if not sa:
        raise ValueError("the join token is malformed")
    return namespace, sa


async def test_registration_into_someone_elses_group_is_refused() -> None:
    group = parse_workload_group(GROUP_YAML)
    reg = EmbeddedRegistry(lambda: [group], _verify)
    request = RegistrationRequest("n1", "shop/reviews", "10.0.0.1", token="shop:ratings")
    with pytest.raises(RegistrationRefused) as err:
        reg.register(request)
    assert err.value.code == "PERMISSION_DENIED"
    assert "serviceAccount shop/reviews" in err.value.reason
    assert "grants shop/ratings" in err.value.reason
    assert reg.instances() == []


async def test_unhealthy_at_once_then_removed_after_grace() -> None:
    group = parse_workload_group({**GROUP_YAML, "spec": {**GROUP_YAML["spec"], "probe": None}})
    removed = asyncio.Event()
    reg = EmbeddedRegistry(lambda: [group], _verify, grace=0.2)
    reg.register(RegistrationRequest("n1", "shop/reviews", "10.0.0.1", token="shop:reviews"))
    assert reg.state_of("n1") is MemberState.CONNECTING and reg.instances() == []
    reg.stream_opened("n1")
    assert [i.endpoint.address for i in reg.instances()] == ["10.0.0.1"]
    # named by its group, as Istio names auto-registered workloads
    assert [(i.endpoint.workload_name, i.endpoint.namespace) for i in reg.instances()] == [
        ("reviews", "shop")
    ]
    reg.on_change = lambda: removed.set() if reg.state_of("n1") is None else None
    reg.stream_closed("n1")
    assert reg.state_of("n1") is MemberState.UNHEALTHY
    assert [i.endpoint.health for i in reg.instances()] == ["UNHEALTHY"]
    await asyncio.wait_for(removed.wait(), 2)
    assert reg.instances() == []


async def test_deregister_drains_and_another_identity_cannot_drain() -> None:
    group = parse_workload_group({**GROUP_YAML, "spec": {**GROUP_YAML["spec"], "probe": None}})
    reg = EmbeddedRegistry(lambda: [group], _verify, grace=5)
    reg.register(RegistrationRequest("n1", "shop/reviews", "10.0.0.1", token="shop:reviews"))
    reg.stream_opened("n1")
    with pytest.raises(RegistrationRefused):
        reg.check_owner("n1", "shop:ratings")
    reg.check_owner("n1", "shop:reviews")
    assert reg.deregister("n1")
    assert reg.state_of("n1") is MemberState.DRAINING
    assert [(i.endpoint.address, i.endpoint.health) for i in reg.instances()] == [
        ("10.0.0.1", "DRAINING")
    ]
    reg.stream_opened("n1")  # a late reconnect does not undo a clean deregistration
    assert [i.endpoint.health for i in reg.instances()] == ["DRAINING"]
    reg.close()


@pytest.fixture
async def consul() -> AsyncIterator[tuple[ConsulDouble, ConsulRegistry, asyncio.Event]]:
    double = ConsulDouble(token="t0k")
    address = double.start()
    changed = asyncio.Event()
    watcher = ConsulRegistry(
        ConsulSettings(address=address, token="t0k", wait="1s", backoff_initial=0.05),
        on_change=changed.set,
    )
    await watcher.start()
    try:
        yield double, watcher, changed
    finally:
        await watcher.stop()
        double.close()


async def _until(changed: asyncio.Event, check: object) -> None:
    async with asyncio.timeout(5):
        while not check():  # type: ignore[operator]
            changed.clear()
            await changed.wait()


async def test_consul_synthesizes_hosts_with_labels_and_locality(consul) -> None:  # type: ignore[no-untyped-def]
    double, watcher, changed = consul
    double.register(
        "web",
        "10.0.0.5",
        8080,
        tags=["version=v2", "blue"],
        meta={"team": "a"},
        node_meta={"zone": "z1"},
    )
    hub = RegistryHub([watcher])
    await _until(changed, lambda: hub.build(hub.augment(MeshConfig())).get("web.service.consul"))
    config = hub.augment(MeshConfig())
    (entry,) = config.service_entries
    assert entry.hosts == ("web.service.consul",) and entry.ports[0].number == 80
    (inst,) = hub.build(config)["web.service.consul"]
    assert inst.labels["version"] == "v2" and inst.labels["team"] == "a"
    assert inst.locality == "dc1/z1" and inst.ports == {"consul": 8080}
    assert any("X" not in r for r in double.requests)


async def test_consul_index_going_backwards_resets(consul) -> None:  # type: ignore[no-untyped-def]
    double, watcher, changed = consul
    sid = double.register("web", "10.0.0.5", 8080)
    for _ in range(5):
        double.update(sid, meta={})  # move the index well past what we reset to
    await _until(changed, lambda: len(watcher.instances()) == 1)
    double.set_index(1)  # Consul restored from a snapshot: the index went back
    double.register("web", "10.0.0.6", 8080)  # index 2: lower than what we had
    await _until(changed, lambda: len(watcher.instances()) == 2)


async def test_consul_down_keeps_endpoints_and_says_so(consul, caplog) -> None:  # type: ignore[no-untyped-def]
    double, watcher, changed = consul
    double.register("web", "10.0.0.5", 8080)
    await _until(changed, lambda: len(watcher.instances()) == 1)
    double.fail_requests(3)
    double.register("web", "10.0.0.6", 8080)  # wakes the blocked queries into errors
    async with asyncio.timeout(5):
        while watcher.status()["errors"] == 0:
            await asyncio.sleep(0.02)
    assert "unreachable or failing" in caplog.text
    await _until(changed, lambda: len(watcher.instances()) == 2)
    async with asyncio.timeout(5):  # each watch clears its error on its next answer
        while watcher.status()["stale"]:
            await asyncio.sleep(0.05)


async def test_consul_wrong_token_is_an_error_not_an_empty_mesh() -> None:
    double = ConsulDouble(token="right")
    address = double.start()
    double.register("web", "10.0.0.5", 8080)
    watcher = ConsulRegistry(ConsulSettings(address=address, token="wrong", backoff_initial=0.05))
    await watcher.start()
    try:
        async with asyncio.timeout(5):
            while watcher.status()["errors"] < 2:
                await asyncio.sleep(0.02)
        assert watcher.status()["stale"] is True and watcher.instances() == []
        assert "403" in watcher.status()["last_error"]
    finally:
        await watcher.stop()
        double.close()


async def test_a_burst_of_registry_changes_is_one_push() -> None:
    """Fifty changes inside the debounce window are applied once, at its end
    (not before the window has passed); a later change opens a new window."""
    loop = asyncio.get_running_loop()
    applied: list[float] = []
    done = asyncio.Event()

    def apply() -> None:
        applied.append(loop.time())
        done.set()

    hub = RegistryHub(apply=apply, debounce=0.05)
    start = loop.time()
    for _ in range(50):
        hub.changed()
    await asyncio.wait_for(done.wait(), 5)
    assert len(applied) == 1
    assert (
        applied[0] - start >= 0.05 - 0.001
    )  # the loop may run a timer up to its clock resolution early
    done.clear()
    hub.changed()
    await asyncio.wait_for(done.wait(), 5)
    assert len(applied) == 2
    hub.close()


def test_registry_debounce_flag() -> None:
    """--registry-debounce reaches the hub; 100 ms (istiod's) by default."""

    def debounce(*extra: str) -> float:
        args = build_parser().parse_args(["control-plane", "--config-dir", ".", *extra])
        runtime = RegistryRuntime(registry_settings(args), None)
        return runtime.hub.debounce

    assert debounce() == 0.1
    assert debounce("--registry-debounce", "0.25s") == 0.25
