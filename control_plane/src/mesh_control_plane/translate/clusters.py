"""CDS: one EDS cluster per service port and per DestinationRule subset.

Every cluster takes its endpoints from EDS over ADS (gRPC NACKs STATIC clusters and
any other config source) under its own name (``service_name`` left unset).
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2

from mesh_control_plane.config.model import DestinationRule, ServicePort, Subset
from mesh_control_plane.translate.cluster_policies import apply_policy
from mesh_control_plane.translate.index import H2_PROTOCOLS, MeshIndex, Service
from mesh_control_plane.translate.names import cluster_name
from mesh_control_plane.translate.node import ClientKind
from mesh_control_plane.translate.policy import EffectivePolicy, effective_policy
from mesh_control_plane.translate.protos import ads_config_source


@dataclass(frozen=True)
class ClusterSpec:
    """One cluster to build: a service port, optionally narrowed to a subset."""

    service: Service
    port: ServicePort
    rule: DestinationRule | None
    subset: Subset | None

    @property
    def name(self) -> str:
        return cluster_name(
            self.service.host, self.port.number, self.subset.name if self.subset else ""
        )

    @property
    def policy(self) -> EffectivePolicy:
        return effective_policy(self.rule, self.subset, self.port.number)


def cluster_specs(index: MeshIndex) -> list[ClusterSpec]:
    """Every cluster, sorted by name; CDS and EDS are both built from this one list so
    that each Cluster has its ClusterLoadAssignment.

    Every port of every service gets one (TCP too: it costs nothing, and TCP
    listeners will need them), plus one per subset of the host's DestinationRule.
    """
    specs: list[ClusterSpec] = []
    for service in index.services.values():
        rule = index.destination_rules.get(service.host)
        for port in service.ports:
            specs.append(ClusterSpec(service, port, rule, None))
            specs.extend(
                ClusterSpec(service, port, rule, s) for s in (rule.subsets if rule else ())
            )
    return sorted(specs, key=lambda spec: spec.name)


def build_cluster(spec: ClusterSpec, kind: ClientKind) -> cluster_pb2.Cluster:
    """The Cluster for one spec, shaped for the client kind (see cluster_policies)."""
    cluster = cluster_pb2.Cluster(name=spec.name, type=cluster_pb2.Cluster.EDS)
    cluster.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
    apply_policy(cluster, spec.policy, kind, spec.port.protocol in H2_PROTOCOLS)
    return cluster
