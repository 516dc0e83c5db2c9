"""CDS: one EDS cluster per service port and per DestinationRule subset.

Every cluster takes its endpoints from EDS over ADS (gRPC NACKs STATIC clusters and
any other config source) under its own name (``service_name`` left unset).
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from mesh_control_plane.config.model import DestinationRule, ServicePort, Subset, TrafficPolicy
from mesh_control_plane.translate.index import H2_PROTOCOLS, MeshIndex, Service
from mesh_control_plane.translate.names import cluster_name
from mesh_control_plane.translate.node import ClientKind
from mesh_control_plane.translate.protos import ads_config_source, duration, pack

CONNECT_TIMEOUT_SECONDS = 10.0
"""Istio's default. Envoy's own default is 5 s; gRPC ignores the field."""

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

_LB_POLICIES: dict[str, int] = {
    "ROUND_ROBIN": cluster_pb2.Cluster.ROUND_ROBIN,
    "RANDOM": cluster_pb2.Cluster.RANDOM,
    "LEAST_REQUEST": cluster_pb2.Cluster.LEAST_REQUEST,
}

_GRPC_LB_POLICIES: frozenset[int] = frozenset({cluster_pb2.Cluster.ROUND_ROBIN})


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
    """The Cluster for one spec, shaped for the client kind."""
    cluster = cluster_pb2.Cluster(
        name=spec.name,
        type=cluster_pb2.Cluster.EDS,
        lb_policy=lb_policy(spec.rule, spec.subset, kind),
        connect_timeout=duration(CONNECT_TIMEOUT_SECONDS),
    )
    cluster.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
    if kind is ClientKind.ENVOY and spec.port.protocol in H2_PROTOCOLS:
        # Envoy speaks HTTP/1.1 upstream unless told otherwise; gRPC backends need h2.
        options = http_protocol_options_pb2.HttpProtocolOptions()
        options.explicit_http_config.http2_protocol_options.SetInParent()
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(pack(options))
    return cluster


def lb_policy(rule: DestinationRule | None, subset: Subset | None, kind: ClientKind) -> int:
    """The cluster's ``lb_policy`` from the DestinationRule.

    A subset's trafficPolicy overrides the rule's top-level one. ROUND_ROBIN (and
    unset, and PASSTHROUGH, which has no meaning without a proxy's original
    destination) give ROUND_ROBIN; RANDOM and LEAST_REQUEST map to themselves for our
    library and Envoy. grpcio's C-core only accepts ROUND_ROBIN and RING_HASH in this
    enum and NACKs the whole cluster otherwise (it has no least_request, gRFC A48, nor
    random), so gRPC clients get ROUND_ROBIN instead: the nearest policy they have.
    """
    simple = _simple(subset.traffic_policy if subset else None) or _simple(
        rule.traffic_policy if rule else None
    )
    policy = _LB_POLICIES.get(simple or "ROUND_ROBIN", _LB_POLICIES["ROUND_ROBIN"])
    if kind is ClientKind.GRPC and policy not in _GRPC_LB_POLICIES:
        return int(cluster_pb2.Cluster.ROUND_ROBIN)
    return policy


def _simple(policy: TrafficPolicy | None) -> str | None:
    if policy is None or policy.load_balancer is None:
        return None
    return policy.load_balancer.simple
