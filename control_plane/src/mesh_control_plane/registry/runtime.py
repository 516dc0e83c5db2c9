"""Wiring of the registry backends into a running control plane.

`RegistryRuntime` owns the hub, the embedded (self-registration) registry, the
optional Consul watcher, and the pieces the xDS server needs (the stream observer
and the registration gRPC handler). The control plane calls `augment()` on every
config it applies and gives `hub.build` to the snapshot cache; a registry change
re-applies the last config with `force=True`.

WorkloadGroups come from `workload_groups_dir` (read again whenever a workload
registers, so a new group needs no restart) and, once the config loader learns the
kind, from `MeshConfig.workload_groups`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.registry.consul import ConsulRegistry, ConsulSettings
from mesh_control_plane.registry.embedded import DEFAULT_GRACE, EmbeddedRegistry
from mesh_control_plane.registry.hub import RegistryHub, RegistrySource
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


class RegistryRuntime:
    def __init__(self, settings: RegistrySettings, verify_token: TokenVerifier | None) -> None:
        # Imported here: xds/ imports the registry package, not the other way round.
        from mesh_control_plane.xds.registration import RegistrationService, StreamObserver

        self.settings = settings
        self._config = MeshConfig()
        self._apply: Callable[[MeshConfig], None] | None = None
        self._groups: tuple[WorkloadGroup, ...] = ()
        self.hub = RegistryHub(apply=self._reapply)
        self.embedded = EmbeddedRegistry(
            self.workload_groups, verify_token, grace=settings.grace, on_change=self.hub.changed
        )
        sources: list[RegistrySource] = [self.embedded]
        self.consul: ConsulRegistry | None = None
        if settings.consul is not None:
            self.consul = ConsulRegistry(settings.consul, on_change=self.hub.changed)
            sources.append(self.consul)
        self.hub.sources = sources
        self.observer = StreamObserver(self.embedded)
        self.handlers: list[grpc.GenericRpcHandler[Any, Any]] = [
            RegistrationService(self.embedded).handler()
        ]

    def workload_groups(self) -> tuple[WorkloadGroup, ...]:
        """The groups now: the directory's (re-read; last good kept on errors) and
        the config's."""
        directory = self.settings.workload_groups_dir
        if directory is not None and directory.is_dir():
            try:
                self._groups = load_workload_groups(directory)
            except WorkloadGroupError as exc:
                log.error("WorkloadGroups not reloaded, keeping the last good: %s", exc)
        from_config: tuple[WorkloadGroup, ...] = getattr(self._config, "workload_groups", ())
        return (*self._groups, *from_config)

    def augment(self, config: MeshConfig) -> MeshConfig:
        """Remember `config` (re-applied on registry changes) and add sources' entries."""
        self._config = config
        return self.hub.augment(config)

    async def start(self, apply: Callable[[MeshConfig], None]) -> None:
        """`apply(augmented_config)` makes a config current with force=True."""
        self._apply = apply
        self.workload_groups()
        if self.consul is not None:
            await self.consul.start()

    async def stop(self) -> None:
        self._apply = None
        self.hub.close()
        self.embedded.close()
        if self.consul is not None:
            await self.consul.stop()

    def _reapply(self) -> None:
        if self._apply is not None:
            self._apply(self.hub.augment(self._config))

    def status(self) -> dict[str, Any]:
        return self.hub.status()
