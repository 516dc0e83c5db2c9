"""The registry hub: static config plus every dynamic source, as one `Registry`.

Dynamic sources (self-registration, Consul, Kubernetes Pods) give *instances* with
labels, like WorkloadEntries that nobody wrote: a ServiceEntry with a `workloadSelector` is served
by the instances whose labels match it, whatever their source (Istio's rule for
WorkloadEntries, extended). A source may also declare ServiceEntries of its own
(Consul's `<service>.service.consul` hosts) which the hub adds to the config before
it reaches the snapshot cache, unless the operator wrote one that selects them.

Sources call `changed()`; the hub coalesces bursts and re-applies the config, so
the translator stays a pure function of (config, registry, node). The first change
starts a window of `debounce` seconds (100 ms by default, istiod's
PILOT_DEBOUNCE_AFTER); every change within it goes out in the one push at its end.
Unlike istiod's (which restarts its wait on each event, up to 10 s), the window
does not grow: at 50 changes a second there are 10 pushes a second, and no change
waits more than the window plus one translation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from mesh_control_plane.config.model import MeshConfig, ServiceEntry, WorkloadEndpoint
from mesh_control_plane.registry.dns import DnsResolver
from mesh_control_plane.registry.static import Registry, build_static_registry, instance_sort_key

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_DEBOUNCE", "DynamicInstance", "RegistryHub", "RegistrySource"]

DEFAULT_DEBOUNCE = 0.1


@dataclass(frozen=True)
class DynamicInstance:
    """One instance from a dynamic source.

    `namespace` scopes it like a WorkloadEntry (only selectors of ServiceEntries in
    that namespace see it); None makes it visible to every namespace (Consul has no
    namespaces of the mesh's kind).
    """

    namespace: str | None
    endpoint: WorkloadEndpoint
    any_port: int | None = None
    """A source that knows one port per instance (Consul) sets it: the instance then
    serves every port of each ServiceEntry that selects it, on this port."""

    def for_entry(self, entry: ServiceEntry) -> WorkloadEndpoint:
        if self.any_port is None:
            return self.endpoint
        ports = {port.name: self.any_port for port in entry.ports}
        return dataclasses.replace(self.endpoint, ports=ports)


class RegistrySource(Protocol):
    """What the hub needs from a backend."""

    def instances(self) -> Sequence[DynamicInstance]:
        """The instances to serve now: only healthy ones."""
        ...

    def service_entries(self, config: MeshConfig) -> Sequence[ServiceEntry]:
        """ServiceEntries the source adds to `config` (hosts nobody declared)."""
        ...

    def status(self) -> Mapping[str, Any]:
        """A JSON-able summary for the admin endpoint."""
        ...


class RegistryHub:
    """Combines the static registry with dynamic sources; `build` is the snapshot
    cache's registry builder and `augment` prepares each config for it."""

    def __init__(
        self,
        sources: Sequence[RegistrySource] = (),
        *,
        apply: Callable[[], None] | None = None,
        debounce: float = DEFAULT_DEBOUNCE,
    ) -> None:
        """`apply` re-applies the current config (the control plane passes a function
        that calls `SnapshotCache.set_config(hub.augment(raw), force=True)`)."""
        self.sources = list(sources)
        self._apply = apply
        self.debounce = debounce
        self._pending: asyncio.TimerHandle | None = None
        self.dns = DnsResolver(on_change=self.changed)

    def augment(self, config: MeshConfig) -> MeshConfig:
        """`config` plus the ServiceEntries the sources declare."""
        extra = [entry for source in self.sources for entry in source.service_entries(config)]
        if not extra:
            return config
        entries = sorted(
            (*config.service_entries, *extra), key=lambda e: (e.meta.namespace, e.meta.name)
        )
        return dataclasses.replace(config, service_entries=tuple(entries))

    def build(self, config: MeshConfig) -> Registry:
        """The static registry, with dynamic instances added to selecting entries."""
        static = build_static_registry(config)
        dynamic = [i for source in self.sources for i in source.instances()]
        if not dynamic:
            return self.dns.resolve(config, static)
        by_host: dict[str, list[WorkloadEndpoint]] = {h: list(v) for h, v in static.items()}
        for entry in config.service_entries:
            selector = entry.workload_selector
            if selector is None:
                continue
            matched = [
                i.for_entry(entry)
                for i in dynamic
                if i.namespace in (None, entry.meta.namespace)
                and all(i.endpoint.labels.get(k) == v for k, v in selector.items())
            ]
            for host in entry.hosts:
                by_host.setdefault(host, []).extend(matched)
        merged = MappingProxyType({h: _unique(by_host[h]) for h in sorted(by_host)})
        return self.dns.resolve(config, merged)

    def changed(self) -> None:
        """A source changed: re-apply soon (coalescing changes that come together).
        Must be called on the control plane's event loop."""
        if self._apply is None or self._pending is not None:
            return
        loop = asyncio.get_running_loop()
        self._pending = loop.call_later(self.debounce, self._flush)

    def _flush(self) -> None:
        self._pending = None
        if self._apply is not None:
            self._apply()

    def close(self) -> None:
        self.dns.close()
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def status(self) -> dict[str, Any]:
        status = {type(s).__name__: dict(s.status()) for s in self.sources}
        if answers := self.dns.answers():
            status["DNS"] = answers
        return status


def _unique(instances: list[WorkloadEndpoint]) -> tuple[WorkloadEndpoint, ...]:
    unique: dict[Any, WorkloadEndpoint] = {}
    for instance in instances:
        unique.setdefault(instance_sort_key(instance), instance)
    return tuple(unique[key] for key in sorted(unique))
