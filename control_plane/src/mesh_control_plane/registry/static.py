"""The static registry: service instances exactly as the config declares them.

A registry answers one question for the translator: which instances serve a host?
It is a plain immutable ``Mapping`` from host to instances, so the translator stays a
pure function of its arguments and can be cached by input. Later backends
(self-registration through the control plane, Consul) produce the same Mapping; only
how they fill it differs, so they can share one conformance suite.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType

from mesh_control_plane.config.model import MeshConfig, ServiceEntry, WorkloadEndpoint

Registry = Mapping[str, tuple[WorkloadEndpoint, ...]]
"""host -> the instances serving it, in a deterministic order."""


def build_static_registry(config: MeshConfig) -> Registry:
    """Collect each ServiceEntry host's instances from the config alone.

    A ServiceEntry with a ``workload_selector`` is served by the WorkloadEntries of
    its namespace whose labels include every selector label (Istio's rule; an empty
    selector selects all of them); otherwise by its inline ``endpoints``. Every host
    of every ServiceEntry appears, with an empty tuple when nothing serves it, so a
    consumer can tell "known but empty" from "unknown". A host declared by several
    ServiceEntries gets the union of their instances.

    Instances are sorted by address, then ports (then the remaining fields, so ties
    are broken deterministically too) and exact duplicates are dropped: the same
    config always yields the same Mapping, whatever order the entries came in.
    """
    by_host: dict[str, list[WorkloadEndpoint]] = {}
    for entry in config.service_entries:
        instances = _instances_of(entry, config)
        for host in entry.hosts:
            by_host.setdefault(host, []).extend(instances)
    return MappingProxyType({host: _sorted_unique(by_host[host]) for host in sorted(by_host)})


def _instances_of(entry: ServiceEntry, config: MeshConfig) -> list[WorkloadEndpoint]:
    if entry.workload_selector is None:
        return list(entry.endpoints)
    selector = entry.workload_selector
    # Istio names a WorkloadEntry's workload (in telemetry) by the entry.
    return [
        replace(
            workload.endpoint, workload_name=workload.meta.name, namespace=workload.meta.namespace
        )
        for workload in config.workload_entries
        if workload.meta.namespace == entry.meta.namespace
        and _labels_match(workload.endpoint.labels, selector)
    ]


def _labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


InstanceKey = tuple[
    str, tuple[tuple[str, int], ...], tuple[tuple[str, str], ...], str, int, str, str
]


def instance_sort_key(instance: WorkloadEndpoint) -> InstanceKey:
    """Total order on instances: address, then ports, then everything else."""
    return (
        instance.address,
        tuple(sorted(instance.ports.items())),
        tuple(sorted(instance.labels.items())),
        instance.locality,
        instance.weight,
        instance.network,
        instance.service_account,
    )


def _sorted_unique(instances: Iterable[WorkloadEndpoint]) -> tuple[WorkloadEndpoint, ...]:
    # WorkloadEndpoint holds dicts, so it is not hashable: deduplicate by sort key.
    unique: dict[InstanceKey, WorkloadEndpoint] = {}
    for instance in instances:
        unique.setdefault(instance_sort_key(instance), instance)
    return tuple(unique[key] for key in sorted(unique))
