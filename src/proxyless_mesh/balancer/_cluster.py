"""From a ClusterLoadAssignment to the set of endpoints a cluster may use.

Health follows Envoy: HEALTHY and UNKNOWN endpoints take traffic; DRAINING,
UNHEALTHY and TIMEOUT never do; DEGRADED only when nothing better is left.
Priorities: the lowest priority that has a usable endpoint serves.
Locality weights and failover arrive with the balancer issue.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxyless_mesh.balancer._round_robin import RoundRobinPicker
from proxyless_mesh.model import ClusterLoadAssignment, Endpoint, HealthStatus

_SERVING = frozenset({HealthStatus.HEALTHY, HealthStatus.UNKNOWN})


@dataclass(frozen=True, slots=True)
class UsableEndpoints:
    """The endpoints chosen to serve, or why there are none."""

    endpoints: tuple[Endpoint, ...]
    reason: str  # empty when endpoints is non-empty


def usable_endpoints(assignment: ClusterLoadAssignment | None) -> UsableEndpoints:
    if assignment is None:
        return UsableEndpoints((), "the cluster has no endpoint assignment yet")
    total = 0
    degraded: tuple[Endpoint, ...] = ()
    for priority in sorted({loc.priority for loc in assignment.localities}):
        group = [
            e for loc in assignment.localities if loc.priority == priority for e in loc.endpoints
        ]
        total += len(group)
        serving = tuple(e for e in group if e.health in _SERVING)
        if serving:
            return UsableEndpoints(serving, "")
        if not degraded:
            degraded = tuple(e for e in group if e.health is HealthStatus.DEGRADED)
    if degraded:
        return UsableEndpoints(degraded, "")
    if total == 0:
        return UsableEndpoints((), "no endpoints are registered")
    return UsableEndpoints((), f"all {total} endpoints are unhealthy or draining")


class ClusterBalancer:
    """The per-cluster picker the data path calls; `reason` explains an empty one."""

    __slots__ = ("name", "pick", "reason", "size")

    def __init__(self, name: str, usable: UsableEndpoints) -> None:
        self.name = name
        self.reason = usable.reason
        self.size = len(usable.endpoints)
        self.pick = RoundRobinPicker(usable.endpoints).pick
