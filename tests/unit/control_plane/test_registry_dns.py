"""ServiceEntry resolution DNS / DNS_ROUND_ROBIN: names resolved by the control
plane into the registry every client's EDS comes from (registry/dns.py)."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import httpx
import yaml
from mesh_control_plane.app import ControlPlane
from mesh_control_plane.config import MeshConfig, parse_documents
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.registry.dns import DnsResolver, prefer_v4


def config(resolution: str, *addresses: str) -> MeshConfig:
    endpoints = ", ".join(f"{{address: {a}, ports: {{http: 8443}}}}" for a in addresses)
    doc = f"""
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {{name: api}}
    spec:
      hosts: [api.external.test]
      location: MESH_EXTERNAL
      resolution: {resolution}
      ports: [{{number: 80, name: http, protocol: HTTP}}]
      endpoints: [{endpoints}]
    """
    return parse_documents([("se.yaml", yaml.safe_load(textwrap.dedent(doc)))])


ANSWERS = {"a.test": ("10.0.0.2", "10.0.0.1"), "b.test": ("10.0.0.9",)}


def addresses(resolver: DnsResolver, cfg: MeshConfig) -> list[str]:
    registry = resolver.resolve(cfg, build_static_registry(cfg))
    return [i.address for i in registry["api.external.test"]]


def test_dns_makes_an_instance_per_address_round_robin_only_the_first() -> None:
    resolver = DnsResolver(lookup_sync=lambda name: ANSWERS.get(name, ()))
    dns = config("DNS", "a.test", "b.test", "10.1.1.1")
    assert not dns.service_entries[0].passthrough
    assert sorted(addresses(resolver, dns)) == ["10.0.0.1", "10.0.0.2", "10.0.0.9", "10.1.1.1"]
    assert sorted(addresses(resolver, config("DNS_ROUND_ROBIN", "a.test"))) == ["10.0.0.2"]
    # Without endpoints a DNS entry stays a passthrough host (not resolved here).
    plain = parse_documents(
        [
            (
                "se.yaml",
                {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "ServiceEntry",
                    "metadata": {"name": "x"},
                    "spec": {
                        "hosts": ["x.test"],
                        "resolution": "DNS",
                        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                    },
                },
            )
        ]
    )
    assert plain.passthrough_entries and not plain.service_entries


def test_ipv4_is_preferred_as_envoys_default_lookup_family() -> None:
    assert prefer_v4(["::1", "127.0.0.1", "127.0.0.1"]) == ("127.0.0.1",)
    assert prefer_v4(["::1"]) == ("::1",)


async def test_on_the_loop_names_resolve_in_the_background_and_changes_reapply() -> None:
    answers = {"a.test": ("10.0.0.1",)}
    changes = asyncio.Queue[None]()

    async def lookup(name: str) -> tuple[str, ...]:
        return answers.get(name, ())

    resolver = DnsResolver(lambda: changes.put_nowait(None), lookup=lookup, refresh=0.01)
    cfg = config("DNS", "a.test")
    try:
        assert addresses(resolver, cfg) == []  # not answered yet: no instance, as Envoy
        await asyncio.wait_for(changes.get(), 5)
        assert addresses(resolver, cfg) == ["10.0.0.1"]
        answers["a.test"] = ("10.0.0.7",)  # the name moves: the next refresh says so
        await asyncio.wait_for(changes.get(), 5)
        assert addresses(resolver, cfg) == ["10.0.0.7"]
    finally:
        resolver.close()


async def test_warm_answers_new_names_before_resolve_and_lists_what_did_not() -> None:
    async def lookup(name: str) -> tuple[str, ...]:
        if name == "slow.test":
            await asyncio.sleep(5)
        return ANSWERS.get(name, ())

    resolver = DnsResolver(lookup=lookup, warm_timeout=0.05)
    cfg = config("DNS", "a.test", "slow.test", "none.test")
    try:
        await resolver.warm(cfg)
        # Answered before the registry is built: no empty first publication.
        assert sorted(addresses(resolver, cfg)) == ["10.0.0.1", "10.0.0.2"]
        assert resolver.unresolved() == ["none.test", "slow.test"]
        assert resolver.answers()["a.test"] == ["10.0.0.2", "10.0.0.1"]
    finally:
        resolver.close()


SLOW_ENTRY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.external.test]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: HOST, ports: {http: 8443}}]
"""


async def test_the_control_plane_publishes_a_dns_entry_only_with_its_first_answer(
    tmp_path: Path,
) -> None:
    """Every registry the control plane publishes, from the first load and
    from a reload adding a name, has the name's address: the slow lookup
    (0.3 s, longer than the hub's debounce) is awaited before the config is
    applied, as Envoy warms a DNS cluster before using it."""

    async def slow(name: str) -> tuple[str, ...]:
        await asyncio.sleep(0.3)
        return {"a.test": ("10.0.0.1",), "b.test": ("10.0.0.2",)}.get(name, ())

    (tmp_path / "se.yaml").write_text(SLOW_ENTRY.replace("HOST", "a.test"))
    plane = ControlPlane(tmp_path, poll_interval=0.02)
    plane.registry.hub.dns = DnsResolver(plane.registry.hub.changed, lookup=slow)
    published: list[list[str]] = []

    def record() -> None:
        instances = plane.cache.registry.get("api.external.test", ())
        published.append([i.address for i in instances])

    plane.cache.add_listener(lambda *_: record())
    await plane.start("127.0.0.1:0", "127.0.0.1:0")
    try:
        assert published == [["10.0.0.1"]]
        (tmp_path / "se.yaml").write_text(SLOW_ENTRY.replace("HOST", "b.test"))
        async with asyncio.timeout(10):
            while published[-1] != ["10.0.0.2"]:
                await asyncio.sleep(0.01)
        assert all(published), published  # never an empty cluster
    finally:
        await plane.stop(grace=0)


async def test_a_name_that_does_not_resolve_is_published_empty_and_reported(
    tmp_path: Path,
) -> None:
    async def never(name: str) -> tuple[str, ...]:
        await asyncio.sleep(5)
        return ()

    (tmp_path / "se.yaml").write_text(SLOW_ENTRY.replace("HOST", "gone.test"))
    plane = ControlPlane(tmp_path, poll_interval=0.02)
    plane.registry.hub.dns = DnsResolver(
        plane.registry.hub.changed, lookup=never, warm_timeout=0.05
    )
    addresses = await plane.start("127.0.0.1:0", "127.0.0.1:0")
    try:
        assert plane.cache.registry.get("api.external.test", ()) == ()
        async with httpx.AsyncClient(base_url=f"http://{addresses.admin}") as http:
            status = (await http.get("/status")).json()
            registry = (await http.get("/registry")).json()
        assert any("gone.test does not resolve" in w for w in status["config_warnings"])
        assert registry["DNS"] == {"gone.test": []}
    finally:
        await plane.stop(grace=0)
