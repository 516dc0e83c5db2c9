"""Endpoint choice for a cluster: Envoy's load-balancing policies, priority
and locality weighting, health, slow start and outlier detection."""

from proxyless_mesh.balancer._cluster import ClusterBalancer
from proxyless_mesh.balancer._hashing import CookieToSet, hash64, hash_key
from proxyless_mesh.balancer._outcome import Outcome
from proxyless_mesh.balancer._schedule import smooth_schedule

__all__ = [
    "ClusterBalancer",
    "CookieToSet",
    "Outcome",
    "hash64",
    "hash_key",
    "smooth_schedule",
]
