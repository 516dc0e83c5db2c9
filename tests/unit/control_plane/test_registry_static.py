"""The static registry: instances of each host, from the config alone."""

from __future__ import annotations

import dataclasses

import pytest
from mesh_control_plane.config.model import MeshConfig, WorkloadEndpoint, WorkloadEntry
from mesh_control_plane.registry import build_static_registry

from .samples import INVENTORY, REVIEWS, canary, http, meta, service, workload_entries


def test_inline_endpoints_sorted_by_address_then_ports() -> None:
    config = MeshConfig(
        service_entries=(
            service(
                "a.mesh",
                (http(80),),
                (
                    WorkloadEndpoint("10.0.0.2"),
                    WorkloadEndpoint("10.0.0.1", ports={"http": 9}),
                    WorkloadEndpoint("10.0.0.1", ports={"http": 10}),
                ),
            ),
        )
    )
    instances = build_static_registry(config)["a.mesh"]
    assert [(i.address, dict(i.ports)) for i in instances] == [
        ("10.0.0.1", {"http": 9}),
        ("10.0.0.1", {"http": 10}),
        ("10.0.0.2", {}),
    ]


def test_workload_selector_picks_labelled_entries_of_the_same_namespace() -> None:
    registry = build_static_registry(workload_entries())
    assert [i.address for i in registry[INVENTORY]] == ["10.3.0.1", "10.3.0.2"]
    # each named, for telemetry, by its WorkloadEntry (Istio's rule)
    assert [(i.workload_name, i.namespace) for i in registry[INVENTORY]] == [
        ("inv-a", "shop"),
        ("inv-b", "shop"),
    ]


def test_empty_selector_selects_every_entry_of_the_namespace() -> None:
    config = workload_entries()
    config = dataclasses.replace(
        config,
        service_entries=(dataclasses.replace(config.service_entries[0], workload_selector={}),),
    )
    registry = build_static_registry(config)
    assert [i.address for i in registry[INVENTORY]] == ["10.3.0.1", "10.3.0.2", "10.3.0.5"]


def test_selector_ignores_inline_endpoints_as_istio_does() -> None:
    config = workload_entries()
    entry = dataclasses.replace(
        config.service_entries[0], endpoints=(WorkloadEndpoint("192.0.2.1"),)
    )
    registry = build_static_registry(dataclasses.replace(config, service_entries=(entry,)))
    assert "192.0.2.1" not in [i.address for i in registry[INVENTORY]]


def test_every_host_is_present_even_without_instances() -> None:
    config = MeshConfig(service_entries=(service("empty.mesh", (http(80),)),))
    assert dict(build_static_registry(config)) == {"empty.mesh": ()}


def test_host_in_two_entries_gets_the_union_without_duplicates() -> None:
    shared = WorkloadEndpoint("10.0.0.1")
    config = MeshConfig(
        service_entries=(
            service("s.mesh", (http(80),), (shared, WorkloadEndpoint("10.0.0.3"))),
            service("s.mesh", (http(80),), (WorkloadEndpoint("10.0.0.1"),), namespace="other"),
        )
    )
    assert [i.address for i in build_static_registry(config)["s.mesh"]] == ["10.0.0.1", "10.0.0.3"]


def test_result_is_independent_of_input_order_and_read_only() -> None:
    config = canary()
    entry = config.service_entries[0]
    reversed_entry = dataclasses.replace(entry, endpoints=entry.endpoints[::-1])
    a = build_static_registry(config)
    b = build_static_registry(dataclasses.replace(config, service_entries=(reversed_entry,)))
    assert a == b
    assert list(a) == sorted(a)
    with pytest.raises(TypeError):
        a[REVIEWS] = ()  # type: ignore[index]


def test_workload_entry_in_other_namespace_is_not_selected() -> None:
    config = MeshConfig(
        service_entries=(service("x.mesh", (http(80),), namespace="a", selector={"app": "x"}),),
        workload_entries=(
            WorkloadEntry(
                meta("WorkloadEntry", "x", "b"), WorkloadEndpoint("10.0.0.1", labels={"app": "x"})
            ),
        ),
    )
    assert build_static_registry(config)["x.mesh"] == ()
