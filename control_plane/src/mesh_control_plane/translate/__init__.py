"""The translator: Istio config + registry + client node -> xDS resources.

A pure function (``translate``), the names resources use to refer to one another,
and a consistency check to run before pushing a result.
"""

from mesh_control_plane.translate.consistency import check_consistency
from mesh_control_plane.translate.names import cluster_name
from mesh_control_plane.translate.node import ClientKind, NodeInfo
from mesh_control_plane.translate.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    TYPE_URLS,
    ResourceSet,
)
from mesh_control_plane.translate.translator import translate

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "TYPE_URLS",
    "ClientKind",
    "NodeInfo",
    "ResourceSet",
    "check_consistency",
    "cluster_name",
    "translate",
]
