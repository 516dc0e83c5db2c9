"""The config directory as the offline tools (`analyze`, `describe`,
`simulate`) see it: loaded by the control plane's own loader, its registry
built the way the control plane builds it, and the library's view of the
translation (`mesh_view`). Nothing runs and nothing listens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh_control_plane.admin.describe import policies_of
from mesh_control_plane.admin.mesh_view import mesh_view
from mesh_control_plane.config import load_config_dir
from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.registry import Registry, build_static_registry
from proxyless_mesh.xds_client import XdsState

__all__ = ["OfflineConfig", "load_offline"]


@dataclass(frozen=True)
class OfflineConfig:
    config: MeshConfig
    registry: Registry
    state: XdsState  # what a library client would hold (translated, decoded)
    policies: tuple[dict[str, Any], ...]  # AuthorizationPolicies as the policy engine reads them

    @property
    def trust_domain(self) -> str:
        settings = getattr(self.config, "settings", None)
        return str(getattr(settings, "trust_domain", "cluster.local"))


def load_offline(config_dir: Path) -> OfflineConfig:
    """Raises ConfigLoadError (the loader's problems) or XdsResourceError (the
    library would NACK what the translator made of the config)."""
    config = load_config_dir(Path(config_dir))
    registry = build_static_registry(config)
    return OfflineConfig(config, registry, mesh_view(config, registry), tuple(policies_of(config)))
