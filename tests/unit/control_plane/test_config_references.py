"""Cross-resource checks: hosts, subsets and ports that are named must exist, once."""

from __future__ import annotations

from typing import Any

import pytest
from mesh_control_plane.config import ConfigLoadError, MeshConfig, parse_documents

API = "networking.istio.io/v1"


def service(name: str, host: str, *ports: int) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ServiceEntry",
        "metadata": {"name": name},
        "spec": {
            "resolution": "STATIC",
            "location": "MESH_INTERNAL",
            "hosts": [host],
            "ports": [{"number": p, "name": f"http-{p}"} for p in ports],
        },
    }


def rule(name: str, host: str, *subsets: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "DestinationRule",
        "metadata": {"name": name},
        "spec": {"host": host, "subsets": [{"name": s, "labels": {"v": s}} for s in subsets]},
    }


def virtual_service(name: str, host: str, *destinations: dict[str, Any]) -> dict[str, Any]:
    """A VirtualService with one route splitting traffic evenly (remainder to the first)."""
    route: list[dict[str, Any]] = [{"destination": d} for d in destinations]
    if len(route) > 1:
        share = 100 // len(route)
        for item in route:
            item["weight"] = share
        route[0]["weight"] = 100 - share * (len(route) - 1)
    return {
        "apiVersion": API,
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": {"hosts": [host], "http": [{"route": route}]},
    }


BASE = [
    service("reviews", "reviews.mesh", 8080, 9090),
    service("ratings", "ratings.mesh", 8080),
    service("details", "details.mesh", 80),
    rule("reviews", "reviews.mesh", "v1", "v2"),
]


def load(*docs: dict[str, Any]) -> MeshConfig:
    return parse_documents(("mesh.yaml", doc) for doc in [*BASE, *docs])


def problems(*docs: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigLoadError) as caught:
        load(*docs)
    return [str(problem) for problem in caught.value.problems]


VS = "mesh.yaml: VirtualService default/vs: "
DEST = VS + "spec.http[0].route[0].destination"


def test_resolving_references_load() -> None:
    config = load(
        virtual_service(
            "vs",
            "reviews.mesh",
            {"host": "reviews.mesh", "subset": "v1"},  # same ports as the listener
            {"host": "ratings.mesh"},  # has 8080 only: a port of reviews
            {"host": "details.mesh"},  # has a single port
            {"host": "reviews.mesh", "subset": "v2", "port": {"number": 9090}},
        )
    )
    (vs,) = config.virtual_services
    assert [d.destination.host for d in vs.http[0].route] == [
        "reviews.mesh",
        "ratings.mesh",
        "details.mesh",
        "reviews.mesh",
    ]
    assert sum(d.weight for d in vs.http[0].route) == 100


def test_virtual_service_host_must_be_declared() -> None:
    assert problems(virtual_service("vs", "nope.mesh", {"host": "ratings.mesh"})) == [
        VS + 'spec.hosts[0]: no ServiceEntry declares host "nope.mesh" (IST0101)'
    ]


def test_destination_host_must_be_declared() -> None:
    assert problems(virtual_service("vs", "ratings.mesh", {"host": "nope.mesh"})) == [
        DEST + '.host: no ServiceEntry declares host "nope.mesh" (IST0101)'
    ]


def test_destination_rule_host_must_be_declared() -> None:
    assert problems(rule("dr", "nope.mesh")) == [
        "mesh.yaml: DestinationRule default/dr: "
        'spec.host: no ServiceEntry declares host "nope.mesh" (IST0101)'
    ]


def test_undefined_subset_loads_with_a_warning_as_in_istio() -> None:
    # GitOps tools apply resources in any order: Istio takes the VirtualService
    # and answers 503 NC for the subset until a DestinationRule defines it.
    config = load(
        virtual_service(
            "vs",
            "reviews.mesh",
            {"host": "reviews.mesh", "subset": "v3"},
            {"host": "ratings.mesh", "subset": "v1"},
        )
    )
    assert [str(w) for w in config.warnings] == [
        DEST + '.subset: no DestinationRule for host "reviews.mesh" defines subset "v3" (yet): '
        "requests to it fail with 503 (NC) until one does (IST0101)",
        VS + "spec.http[0].route[1].destination.subset: no DestinationRule for host "
        '"ratings.mesh" defines subset "v1" (yet): '
        "requests to it fail with 503 (NC) until one does (IST0101)",
    ]


def test_destination_port_must_be_a_port_of_the_service() -> None:
    dest = {"host": "ratings.mesh", "port": {"number": 9999}}
    assert problems(virtual_service("vs", "ratings.mesh", dest)) == [
        DEST + ".port.number: ServiceEntry default/ratings has no port 9999 (ports: 8080) (IST0101)"
    ]


def test_omitted_port_must_be_resolvable_on_every_listener_port() -> None:
    # details listens on 80; reviews has two ports and neither is 80: which one?
    assert problems(virtual_service("vs", "details.mesh", {"host": "reviews.mesh"})) == [
        DEST + '.port: required: host "reviews.mesh" has several ports (8080, 9090) '
        "and none is 80, a port of this VirtualService's hosts (IST0112)"
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            service("reviews-again", "reviews.mesh", 80),
            "ServiceEntry default/reviews-again: spec.hosts[0]: "
            'host "reviews.mesh" is already declared by ServiceEntry default/reviews (mesh.yaml)',
        ),
        (
            rule("reviews-again", "reviews.mesh"),
            "DestinationRule default/reviews-again: spec.host: "
            'host "reviews.mesh" already has DestinationRule default/reviews (mesh.yaml)',
        ),
    ],
)
def test_a_host_is_declared_and_configured_once(extra: dict[str, Any], message: str) -> None:
    assert problems(extra) == ["mesh.yaml: " + message]


def test_a_host_is_routed_by_one_virtual_service() -> None:
    first = virtual_service("a", "ratings.mesh", {"host": "ratings.mesh"})
    second = virtual_service("b", "ratings.mesh", {"host": "ratings.mesh"})
    assert problems(second, first) == [
        "mesh.yaml: VirtualService default/b: spec.hosts[0]: "
        'host "ratings.mesh" is already routed by VirtualService default/a (mesh.yaml) for '
        "every namespace (VirtualServices of one host are merged only for gateways: give them "
        "exportTo that no namespace shares) (IST0109)"
    ]


def test_reference_checks_wait_for_clean_parsing() -> None:
    """A ServiceEntry that fails to parse must not also show up as dangling references."""
    broken = service("broken", "broken.mesh", 80)
    broken["spec"]["resolution"] = "DNSS"
    assert problems(broken, virtual_service("vs", "broken.mesh", {"host": "broken.mesh"})) == [
        "mesh.yaml: ServiceEntry default/broken: spec.resolution: "
        'unknown value "DNSS" (expected one of STATIC, NONE, DNS, DNS_ROUND_ROBIN) (IST0106)'
    ]


def test_routing_a_passthrough_host_is_refused_naming_why() -> None:
    external = service("ext", "ext.mesh", 80)
    del external["spec"]["resolution"]  # Istio's default: NONE
    assert problems(external, virtual_service("vs", "ext.mesh", {"host": "ext.mesh"})) == [
        'mesh.yaml: VirtualService default/vs: spec.hosts[0]: host "ext.mesh" is declared by '
        "ServiceEntry default/ext (mesh.yaml) with resolution NONE (the default): requests "
        "pass through to the host itself, so routing and traffic policy for it are not "
        "supported yet in-process; use resolution: STATIC with endpoints (IST0101)",
        "mesh.yaml: VirtualService default/vs: spec.http[0].route[0].destination.host: host "
        '"ext.mesh" is declared by ServiceEntry default/ext (mesh.yaml) with resolution NONE '
        "(the default): requests pass through to the host itself, so routing and traffic "
        "policy for it are not supported yet in-process; use resolution: STATIC with endpoints "
        "(IST0101)",
    ]


def test_one_namespace_wide_peer_authentication_per_namespace() -> None:
    def wide(name: str) -> dict[str, Any]:
        return {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"mtls": {"mode": "STRICT"}},
        }

    assert problems(wide("a"), wide("b")) == [
        "mesh.yaml: PeerAuthentication shop/b: spec: namespace 'shop' already has a "
        "namespace-wide PeerAuthentication, PeerAuthentication shop/a (mesh.yaml); "
        "give this one a selector or merge them"
    ]
