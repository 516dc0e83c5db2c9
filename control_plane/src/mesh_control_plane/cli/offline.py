"""The config directory as the offline tools (`analyze`, `describe`,
`simulate`) see it: loaded by the control plane's own loader, its registry
built the way the control plane builds it, and the library's view of the
translation (`mesh_view`). Nothing runs and nothing listens."""

from __future__ import annotations

from pathlib import Path

from mesh_control_plane.admin.simulate import ConfigView
from mesh_control_plane.config import load_config_dir
from mesh_control_plane.registry import build_static_registry

__all__ = ["load_offline"]


def load_offline(config_dir: Path) -> ConfigView:
    """Raises ConfigLoadError (the loader's problems) or XdsResourceError (the
    library would NACK what the translator made of the config)."""
    config = load_config_dir(Path(config_dir))
    return ConfigView.of(config, build_static_registry(config))
