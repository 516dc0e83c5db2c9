"""The xDS side of the control plane: snapshot cache and ADS server (SotW and Delta)."""

from mesh_control_plane.xds.clients import ClientRecord, Subscription, TypeState, short_type_name
from mesh_control_plane.xds.server import AdsServicer, XdsServer
from mesh_control_plane.xds.snapshot import InconsistentConfigError, PackedResource, SnapshotCache

__all__ = [
    "AdsServicer",
    "ClientRecord",
    "InconsistentConfigError",
    "PackedResource",
    "SnapshotCache",
    "Subscription",
    "TypeState",
    "XdsServer",
    "short_type_name",
]
