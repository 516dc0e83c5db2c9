"""ServiceEntry `addresses`: virtual IPs that name an HTTP service too (route
domains and client listeners); what Istio does with them by destination IP
is refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from mesh_control_plane.config import ConfigLoadError, MeshConfig, parse_documents
from mesh_control_plane.config.references import reference_warnings
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import LISTENER, ROUTE, ClientKind, NodeInfo, translate


def entry(name: str, addresses: list[str], protocol: str = "HTTP", **more: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "hosts": [f"{name}.example.test"],
        "addresses": addresses,
        "resolution": "STATIC",
        "ports": [{"number": 8080, "name": "p", "protocol": protocol}],
        "endpoints": [{"address": "10.0.0.1"}],
        **more,
    }
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }


def load(*docs: dict[str, Any]) -> MeshConfig:
    return parse_documents([("se.yaml", doc) for doc in docs])


def problems(*docs: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigLoadError) as caught:
        load(*docs)
    return [str(problem) for problem in caught.value.problems]


def test_addresses_name_the_service_for_every_client_kind() -> None:
    config = load(entry("api", ["240.0.0.5", "fd00::5"]))
    registry = build_static_registry(config)
    proxyless = translate(config, registry, NodeInfo(id="c", kind=ClientKind.MESH))
    assert sorted(proxyless.resources[LISTENER]) == [
        "240.0.0.5:8080",
        "[fd00::5]:8080",
        "api.example.test:8080",
        "virtualInbound",
    ]
    table: Any = proxyless.resources[ROUTE]["240.0.0.5:8080"]
    (vhost,) = table.virtual_hosts
    assert list(vhost.domains) == ["api.example.test:8080", "240.0.0.5:8080", "[fd00::5]:8080"]
    envoy = translate(config, registry, NodeInfo(id="e", kind=ClientKind.ENVOY))
    outbound: Any = envoy.resources[ROUTE]["virtualOutbound"]
    assert "240.0.0.5:8080" in outbound.virtual_hosts[0].domains
    (warning,) = reference_warnings(config)
    assert "the library never looks an IP up in the mesh" in str(warning)
    assert str(warning).startswith("se.yaml: ServiceEntry shop/api: spec.addresses: ")


def test_what_would_match_by_destination_ip_is_refused_by_field() -> None:
    assert problems(
        entry("a", ["10.1.0.0/16", "not-an-ip"]),
        entry("b", ["240.0.0.1"], protocol="TCP"),
        entry("c", ["240.0.0.2"], hosts=["c1.test", "c2.test"]),
    ) == [
        "se.yaml: ServiceEntry shop/a: spec.addresses[0]: CIDR range 10.1.0.0/16 not supported "
        "yet: a range selects traffic by destination IP, which needs traffic capture; clients "
        "here name the address they call",
        'se.yaml: ServiceEntry shop/a: spec.addresses[1]: "not-an-ip" is not an IP address or '
        "CIDR range",
        "se.yaml: ServiceEntry shop/b: spec.addresses: on TCP ports not supported yet: Istio "
        "would match that traffic by destination IP (a listener on address:port, no Host "
        "header), which needs traffic capture this mesh does not have",
        "se.yaml: ServiceEntry shop/c: spec.addresses: with several hosts: which host an "
        "address names is ambiguous",
    ]
    # Once every entry parses: one address names one service.
    assert problems(entry("d", ["240.0.0.3"]), entry("e", ["240.0.0.3"])) == [
        "se.yaml: ServiceEntry shop/e: spec.addresses[0]: address 240.0.0.3 already names "
        "d.example.test, ServiceEntry shop/d (se.yaml)",
    ]
