"""ServiceEntry resolution DNS / DNS_ROUND_ROBIN: names resolved by the control
plane into the registry every client's EDS comes from (registry/dns.py)."""

from __future__ import annotations

import asyncio
import textwrap

import yaml
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
