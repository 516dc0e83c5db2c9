"""Where service instances come from: the registry the translator reads.

Every backend produces the same immutable ``Registry`` mapping (host -> instances);
today only the static one, built from the config's ServiceEntries and WorkloadEntries.
"""

from mesh_control_plane.registry.static import Registry, build_static_registry

__all__ = ["Registry", "build_static_registry"]
