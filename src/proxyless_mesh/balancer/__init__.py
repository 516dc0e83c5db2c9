"""Endpoint choice for a cluster: health filtering and load-balancing pickers."""

from proxyless_mesh.balancer._cluster import ClusterBalancer, UsableEndpoints, usable_endpoints
from proxyless_mesh.balancer._round_robin import RoundRobinPicker, smooth_schedule

__all__ = [
    "ClusterBalancer",
    "RoundRobinPicker",
    "UsableEndpoints",
    "smooth_schedule",
    "usable_endpoints",
]
