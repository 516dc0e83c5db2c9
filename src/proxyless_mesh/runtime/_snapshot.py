"""The snapshot the data path reads: routes, balancers and inbound policies.

`MeshSnapshot` is immutable: each xDS update builds a new one (the composition
root does, with `proxyless_mesh.snapshot.build_snapshot`) and swaps one
reference, so a request reads whatever snapshot was current when it started
and never takes a lock. This module knows no xDS client: the integrations
read the type without importing the protobuf decoders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from proxyless_mesh.balancer import ClusterBalancer
from proxyless_mesh.model import Cluster, ClusterLoadAssignment, InboundListener
from proxyless_mesh.policy import PolicySet
from proxyless_mesh.routing import RouteTable


@dataclass(frozen=True, slots=True)
class BalancerSource:
    """What a balancer was built from, to reuse an unchanged one next time."""

    cluster: Cluster | None
    assignment: ClusterLoadAssignment | None


@dataclass(frozen=True, slots=True)
class InboundPolicy:
    """One server listener and the PolicySet compiled from it."""

    listener: InboundListener
    policies: PolicySet


@dataclass(frozen=True, slots=True)
class MeshSnapshot:
    """Routes per authority (`host:port`), balancers per cluster, and the
    authorities the control plane said are not mesh services."""

    routes: Mapping[str, RouteTable] = field(default_factory=dict)
    balancers: Mapping[str, ClusterBalancer] = field(default_factory=dict)
    absent: frozenset[str] = frozenset()
    # Clusters the routes name that have not arrived and are not known absent
    # (a named subscription's first answer is on its way): a request waits.
    awaited: frozenset[str] = frozenset()
    # What each balancer was built from, to reuse unchanged ones next time.
    sources: Mapping[str, BalancerSource] = field(default_factory=dict)
    # Server listeners by name (the inbound half), with their compiled policy.
    inbound: Mapping[str, InboundPolicy] = field(default_factory=dict)
    # The workload's Sidecar outboundTrafficPolicy mode, when the control plane
    # sent one: it overrides the client's own outbound policy.
    outbound_policy: str | None = None

    def knows(self, authority: str) -> bool:
        return authority in self.routes or authority in self.absent
