"""Incremental translation equals a full one: for random sequences of instance
changes (health, labels that move an instance in or out of a subset, locality,
service account, weight, instances added and removed) to the ServiceEntries of
the golden samples, the IncrementalTranslator, carried across the sequence,
gives for every client kind the same resources, byte for byte, as translate()
of the same config from scratch; and it did take the incremental path."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from mesh_control_plane.config.model import MeshConfig, WorkloadEndpoint
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import ClientKind, NodeInfo, ResourceSet, translate
from mesh_control_plane.translate.incremental import IncrementalTranslator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from unit.control_plane.samples import SAMPLES

NODES = (
    *(NodeInfo(id=f"n-{kind.value}", kind=kind) for kind in ClientKind),
    # a workload with inbound listeners (security sample's payments instance)
    NodeInfo(
        id="payments",
        kind=ClientKind.MESH,
        namespace="shop",
        service_account="payments",
        labels=(("app", "payments"),),
        instance_ips=("10.4.0.1",),
    ),
    # a located client: priorities follow its locality where a rule asks
    NodeInfo(id="located", kind=ClientKind.GRPC, locality=("us-east", "a", "rack1")),
)

change = st.tuples(
    st.integers(min_value=0, max_value=10_000),  # which entry (modulo)
    st.integers(min_value=0, max_value=10_000),  # which instance (modulo)
    st.sampled_from(["health", "version", "locality", "account", "weight", "add", "remove"]),
    st.sampled_from(["HEALTHY", "UNHEALTHY", "DRAINING"]),
    st.sampled_from(["v1", "v2", "v3"]),
    st.sampled_from(["", "us-east/a/rack1", "us-east/b", "eu-west"]),
)


def apply(config: MeshConfig, step: tuple[int, int, str, str, str, str]) -> MeshConfig:
    which, index, what, health, version, locality = step
    entries = list(config.service_entries)
    inline = [i for i, e in enumerate(entries) if e.workload_selector is None]
    if not inline:
        return config
    e = inline[which % len(inline)]
    endpoints = list(entries[e].endpoints)
    if what == "add" or not endpoints:
        endpoints.append(
            WorkloadEndpoint(address=f"10.77.{index % 250}.{which % 250}", locality=locality)
        )
    else:
        i = index % len(endpoints)
        old = endpoints[i]
        if what == "remove":
            del endpoints[i]
        else:
            field, value = {
                "health": ("health", health),
                "version": ("labels", {**old.labels, "version": version}),
                "locality": ("locality", locality),
                "account": ("service_account", "" if old.service_account else "sa-" + version),
                "weight": ("weight", 1 + which % 4),
            }[what]
            endpoints[i] = dataclasses.replace(old, **{field: value})
    entries[e] = dataclasses.replace(entries[e], endpoints=tuple(endpoints))
    return dataclasses.replace(config, service_entries=tuple(entries))


def wire(rs: ResourceSet) -> dict[str, dict[str, bytes]]:
    return {
        type_url: {n: m.SerializeToString(deterministic=True) for n, m in by_name.items()}
        for type_url, by_name in rs.resources.items()
    }


@given(
    st.sampled_from(sorted(SAMPLES)),
    st.lists(st.lists(change, min_size=1, max_size=3), min_size=1, max_size=6),
)
def test_incremental_equals_full(sample: str, batches: list[list[tuple]]) -> None:  # type: ignore[type-arg]
    config = SAMPLES[sample]()
    translator = IncrementalTranslator()
    for node in NODES:
        translator(config, build_static_registry(config), node)
    for batch in batches:  # several changes may reach one translation (debounced)
        for step in batch:
            config = apply(config, step)
        registry = build_static_registry(config)
        for node in NODES:
            full = translate(config, registry, node)
            incremental = translator(config, registry, node)
            assert wire(incremental) == wire(full), (sample, node.id)
            assert incremental.undefined_subsets == full.undefined_subsets
    assert translator.full == len(NODES), "only the first translation is from scratch"


def test_a_config_change_translates_from_scratch() -> None:
    """The other side: a rule that changes makes the next translation a full one."""
    config = SAMPLES["canary"]()
    translator = IncrementalTranslator()
    node = NODES[0]
    translator(config, build_static_registry(config), node)
    changed = dataclasses.replace(config, destination_rules=())
    result = translator(changed, build_static_registry(changed), node)
    assert translator.full == 2 and translator.incremental == 0
    assert wire(result) == wire(translate(changed, build_static_registry(changed), node))
