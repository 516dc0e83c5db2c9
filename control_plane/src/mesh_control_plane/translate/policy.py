"""Which traffic policy applies to one cluster: Istio's merge of a
DestinationRule's top-level policy, its portLevelSettings, and a subset's own.

Istio merges field by field at the top level of TrafficPolicy: a subset's
`loadBalancer` replaces the rule's `loadBalancer` entirely (the two are not
merged key by key), and a `portLevelSettings` entry for the cluster's port
replaces the fields it sets. Order, lowest to highest: rule, rule's port
settings, subset, subset's port settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh_control_plane.config.model import (
    ClientTls,
    ConnectionPool,
    ConsistentHash,
    DestinationRule,
    LoadBalancerSettings,
    OutlierDetection,
    Subset,
    TrafficPolicy,
)


@dataclass(frozen=True)
class EffectivePolicy:
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTls | None = None  # None: not written, auto mTLS decides

    @property
    def consistent_hash(self) -> ConsistentHash | None:
        return self.load_balancer.consistent_hash if self.load_balancer else None


def effective_policy(
    rule: DestinationRule | None, subset: Subset | None, port: int
) -> EffectivePolicy:
    """The policy for the cluster of (`rule`'s host, `port`, `subset`)."""
    result = EffectivePolicy()
    if rule is not None:
        result = _apply(result, rule.traffic_policy, port)
    if subset is not None:
        result = _apply(result, subset.traffic_policy, port)
    return result


def subset_of(rule: DestinationRule | None, name: str | None) -> Subset | None:
    if rule is None or not name:
        return None
    return next((s for s in rule.subsets if s.name == name), None)


def _apply(base: EffectivePolicy, policy: TrafficPolicy | None, port: int) -> EffectivePolicy:
    if policy is None:
        return base
    merged = EffectivePolicy(
        policy.load_balancer or base.load_balancer,
        policy.connection_pool or base.connection_pool,
        policy.outlier_detection or base.outlier_detection,
        policy.tls or base.tls,
    )
    for settings in policy.port_level_settings:
        if settings.port == port:
            merged = EffectivePolicy(
                settings.load_balancer or merged.load_balancer,
                settings.connection_pool or merged.connection_pool,
                settings.outlier_detection or merged.outlier_detection,
                settings.tls or merged.tls,
            )
    return merged
