"""Wiring of the registry backends into a running control plane.

`RegistryRuntime` owns the hub, the embedded (self-registration) registry and the
optional Consul and Kubernetes watchers; the control plane (app.py) serves the embedded registry's
registration service and stream observer beside ADS (xds/ depends on the registry,
never the reverse). The control plane calls `augment()` on every
config it applies and gives `hub.build` to the snapshot cache; a registry change
re-applies the last config with `force=True`.

WorkloadGroups come from the config directory (`MeshConfig.workload_groups`, applied
by every reload of the config watcher) and, for back-compatibility, from
`workload_groups_dir` (read again whenever a workload registers, so a new group needs
no restart). A group defined in both (same namespace/name) is the config directory's:
it is the validated, watched source, and pointing both flags at one directory must
work; a warning names both files when the two definitions differ.

A changed or removed group governs admissions from then on: new registrations and
re-registrations into a removed group are refused (NOT_FOUND). Members already
admitted are not evicted: they keep serving with the template they registered with
until they re-register or their stream ends (then the grace period applies as usual).
Taking running, authenticated endpoints out of the mesh because a file changed is the
risky direction (a file moved between the two directories would drain a service);
stopping the workloads is how an operator removes them. Each such orphan is logged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.kube.client import connection_from
from mesh_control_plane.registry.consul import ConsulRegistry, ConsulSettings
from mesh_control_plane.registry.embedded import DEFAULT_GRACE, EmbeddedRegistry
from mesh_control_plane.registry.hub import DEFAULT_DEBOUNCE, RegistryHub, RegistrySource
from mesh_control_plane.registry.kubernetes import KubernetesRegistry, KubernetesSettings
from mesh_control_plane.registry.workload_group import (
    WorkloadGroup,
    WorkloadGroupError,
    load_workload_groups,
)

log = logging.getLogger(__name__)

__all__ = ["RegistryRuntime", "RegistrySettings"]

TokenVerifier = Callable[[str], tuple[str, str]]


@dataclass(frozen=True)
class RegistrySettings:
    workload_groups_dir: Path | None = None
    grace: float = DEFAULT_GRACE  # seconds an unhealthy self-registered instance is kept
    consul: ConsulSettings | None = None
    kubeconfig: str = ""  # a kubeconfig path or "in-cluster": watch Kubernetes
    kubernetes: KubernetesSettings | None = None
    kube_resources: bool = True  # with kubeconfig: Istio config from custom resources too
    ca_secret: str = ""  # namespace/name: the CA's files shared by replicas through it
    leader_lease: str = (
        ""  # namespace/name; "": <kubeconfig namespace>/proxyless-mesh-control-plane
    )
    lease_duration: float = 15.0
    debounce: float = DEFAULT_DEBOUNCE  # seconds registry changes are gathered into one push


class RegistryRuntime:
    def __init__(self, settings: RegistrySettings, verify_token: TokenVerifier | None) -> None:
        self.settings = settings
        self._config = MeshConfig()
        self._apply: Callable[[MeshConfig], None] | None = None
        self._groups: tuple[WorkloadGroup, ...] = ()
        self._shadowed: set[tuple[str, str, str]] = set()
        self.hub = RegistryHub(apply=self._reapply, debounce=settings.debounce)
        self.embedded = EmbeddedRegistry(
            self.workload_groups, verify_token, grace=settings.grace, on_change=self.hub.changed
        )
        sources: list[RegistrySource] = [self.embedded]
        self.consul: ConsulRegistry | None = None
        if settings.consul is not None:
            self.consul = ConsulRegistry(settings.consul, on_change=self.hub.changed)
            sources.append(self.consul)
        self.kubernetes: KubernetesRegistry | None = None
        if settings.kubeconfig:
            connection = connection_from(settings.kubeconfig)
            self.kubernetes = KubernetesRegistry(
                connection, settings.kubernetes, on_change=self.hub.changed
            )
            sources.append(self.kubernetes)
        self.hub.sources = sources

    def workload_groups(self) -> tuple[WorkloadGroup, ...]:
        """The groups now: the config's, then the directory's (re-read; last good
        kept on errors) that the config does not define (see the module docstring)."""
        directory = self.settings.workload_groups_dir
        if directory is not None and directory.is_dir():
            try:
                self._groups = load_workload_groups(directory)
            except WorkloadGroupError as exc:
                log.error("WorkloadGroups not reloaded, keeping the last good: %s", exc)
        from_config = {g.ref: g for g in self._config.workload_groups}
        extra: list[WorkloadGroup] = []
        for group in self._groups:
            winner = from_config.get(group.ref)
            if winner is None:
                extra.append(group)
            elif winner != _same_origin(group, winner):
                self._warn_shadowed(group, winner)
        return (*from_config.values(), *extra)

    def _warn_shadowed(self, group: WorkloadGroup, winner: WorkloadGroup) -> None:
        """Once per pair of files (workload_groups() runs on every registration)."""
        key = (group.ref, group.file, winner.file)
        if key not in self._shadowed:
            self._shadowed.add(key)
            log.warning(
                "WorkloadGroup %s is defined in the config directory (%s) and in "
                "--workload-groups-dir (%s): the config directory's is used",
                group.ref,
                winner.file,
                group.file,
            )

    def augment(self, config: MeshConfig) -> MeshConfig:
        """Remember `config` (re-applied on registry changes) and add sources' entries."""
        if self._config.workload_groups == config.workload_groups:
            self._config = config
            return self.hub.augment(config)
        before = {g.ref: g for g in self.workload_groups()}
        self._config = config
        self._report_orphans(before, {g.ref: g for g in self.workload_groups()})
        return self.hub.augment(config)

    def _report_orphans(
        self, before: dict[str, WorkloadGroup], after: dict[str, WorkloadGroup]
    ) -> None:
        """Log members whose group the config removed or changed: they stay served
        (see the module docstring), and the operator should know it."""
        members = self.embedded.status().get("members", {})
        for node, member in members.items():
            ref = member.get("group", "")
            if ref not in before or before[ref] == after.get(ref):
                continue
            change = "removed" if ref not in after else "changed"
            log.warning(
                "WorkloadGroup %s was %s: member %s keeps its registration until it "
                "re-registers or disconnects; new registrations follow the new config",
                ref,
                change,
                node,
            )

    async def start(self, apply: Callable[[MeshConfig], None]) -> None:
        """`apply(augmented_config)` makes a config current with force=True."""
        self._apply = apply
        self.workload_groups()
        if self.consul is not None:
            await self.consul.start()
        if self.kubernetes is not None:
            await self.kubernetes.start()

    async def stop(self) -> None:
        self._apply = None
        self.hub.close()
        self.embedded.close()
        if self.consul is not None:
            await self.consul.stop()
        if self.kubernetes is not None:
            await self.kubernetes.stop()

    def _reapply(self) -> None:
        if self._apply is not None:
            self._apply(self.hub.augment(self._config))

    def status(self) -> dict[str, Any]:
        return self.hub.status()


def _same_origin(group: WorkloadGroup, winner: WorkloadGroup) -> WorkloadGroup:
    """`group` with the winner's file: equal to it when only the file names differ,
    i.e. both flags point at the same definition (no warning then)."""
    return dataclasses.replace(group, file=winner.file)
