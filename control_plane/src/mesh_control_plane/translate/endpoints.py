"""EDS: registry instances -> ClusterLoadAssignments, grouped by locality.

Every cluster gets an assignment, an empty one when nothing serves it: a client then
learns at once that the cluster is empty, where gRPC would otherwise wait 15 s before
calling the resource missing.

Instances carry their registry health to ``health_status`` (HEALTHY, UNHEALTHY,
DRAINING): a client stops picking a draining or unhealthy endpoint the moment the
assignment arrives. How health reaches the locality weight depends on the client
(``locality_weight``), so that a locality loses its unhealthy share exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from mesh_control_plane.config.model import LocalityLbSetting, ServicePort, WorkloadEndpoint
from mesh_control_plane.registry.static import Registry
from mesh_control_plane.translate.clusters import ClusterSpec
from mesh_control_plane.translate.locality import (
    Locality,
    Member,
    compact,
    distribute_weights,
    failover_priority,
    label_priority,
)
from mesh_control_plane.translate.node import ClientKind, NodeInfo
from proxyless_mesh.telemetry import DEFAULT_CLUSTER, canonical_revision, canonical_service

Group = tuple[int, Locality]  # (priority, locality)
Entry = tuple[str, int, int, int, str]  # (address, port, weight, health_status, workload)

ISTIO_METADATA = "istio"  # the filter metadata namespace istiod writes on endpoints
_STATUS: dict[str, int] = {
    "HEALTHY": health_check_pb2.HEALTHY,
    "DRAINING": health_check_pb2.DRAINING,
    "UNHEALTHY": health_check_pb2.UNHEALTHY,
}
# When two instances resolve to the same address and port (a workload restarted on
# its old port while its previous registration drains), the client would reject the
# whole assignment for the duplicate: keep the one that serves.
_PREFERENCE = {"HEALTHY": 0, "DRAINING": 1, "UNHEALTHY": 2}


def build_load_assignment(
    spec: ClusterSpec, registry: Registry, node: NodeInfo
) -> endpoint_pb2.ClusterLoadAssignment:
    """The endpoints of one cluster, as `node` should see them.

    Instances of the host that carry every label of the subset (all of them for the
    whole-service cluster), on the port resolved by ``endpoint_port``, grouped by
    (priority, locality), sorted. Each group carries ``load_balancing_weight`` =
    ``locality_weight(node.kind, ...)`` unless a ``distribute`` rule sets it.
    Priorities depend on the node only when the cluster's policy has an enabled
    ``localityLbSetting`` (see locality.py).
    """
    labels = spec.subset.labels if spec.subset else {}
    members = _one_per_address(
        spec,
        [
            (instance, parse_locality(instance.locality))
            for instance in registry.get(spec.service.host, ())
            if all(instance.labels.get(key) == value for key, value in labels.items())
        ],
    )
    priorities = compact({i: _priority(spec, node, member) for i, member in enumerate(members)})
    groups: dict[Group, list[Entry]] = {}
    for i, (instance, locality) in enumerate(members):
        endpoint = (
            instance.address,
            endpoint_port(instance, spec.port),
            _weight(instance),
            _status(instance),
            telemetry_metadata(instance),
        )
        groups.setdefault((priorities[i], locality), []).append(endpoint)
    weights = {group: locality_weight(node.kind, eps) for group, eps in groups.items()}
    setting = _setting(spec)
    if setting is not None and setting.distribute:
        by_locality = {loc: w for (_, loc), w in weights.items()}
        shares = distribute_weights(setting, node.locality, by_locality)
        if shares is not None:
            weights = {g: shares[g[1]] for g in weights if g[1] in shares}
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=spec.name)
    for group in sorted(weights):
        assignment.endpoints.append(
            _locality_endpoints(group, sorted(groups[group]), weights[group])
        )
    return assignment


def locality_weight(kind: ClientKind, endpoints: Iterable[Entry]) -> int:
    """A locality's ``load_balancing_weight`` for a client of `kind`, at least 1
    (gRPC drops a locality without one).

    Envoy and our library apply Envoy's locality rule themselves: effective weight =
    weight x min(1, overprovisioning_factor/100 x healthy/total), where total leaves
    out DRAINING (excluded) hosts. They must get the weight of the locality's whole
    non-draining population: a weight already cut to the healthy endpoints would be
    cut a second time by the healthy ratio (with A: 2 of 4 unhealthy, B: 4 healthy,
    A would get 1.4/5.4 = 26 % instead of Envoy's 2.8/6.8 = 41 %). DRAINING
    endpoints stay out of the sum because those clients leave them out of `total`
    too; counting them would inflate the locality.

    grpcio's weighted_target picks a locality by its configured weight alone: it
    does not scale by health (its xDS client sends no new call to an UNHEALTHY or
    DRAINING endpoint, and only a locality with no READY endpoint is skipped), so a
    gRPC client gets the sum over HEALTHY endpoints: the only place its share can
    shrink.
    """
    if kind is ClientKind.GRPC:
        counted = [e for e in endpoints if e[3] == _STATUS["HEALTHY"]]
    else:
        counted = [e for e in endpoints if e[3] != _STATUS["DRAINING"]]
    return max(1, sum(e[2] for e in counted))


def _one_per_address(spec: ClusterSpec, members: list[Member]) -> list[Member]:
    """`members` without address:port duplicates, the best-serving one kept."""
    best: dict[tuple[str, int], Member] = {}
    for member in members:
        key = (member[0].address, endpoint_port(member[0], spec.port))
        kept = best.get(key)
        if kept is None or _preference(member[0]) < _preference(kept[0]):
            best[key] = member
    return list(best.values())


def _preference(instance: WorkloadEndpoint) -> int:
    return _PREFERENCE.get(instance.health, len(_PREFERENCE))


def _status(instance: WorkloadEndpoint) -> int:
    # A status this translator does not know is not served: fail closed.
    return _STATUS.get(instance.health, _STATUS["UNHEALTHY"])


def _setting(spec: ClusterSpec) -> LocalityLbSetting | None:
    lb = spec.policy.load_balancer
    setting = lb.locality_lb_setting if lb else None
    return setting if setting is not None and setting.enabled else None


def _priority(spec: ClusterSpec, node: NodeInfo, member: Member) -> int:
    setting = _setting(spec)
    # Istio fails over only with outlier detection: without ejection, endpoints of
    # priority 0 never look unhealthy and the other priorities would never be used.
    if setting is None or setting.distribute or spec.policy.outlier_detection is None:
        return 0
    if setting.failover_priority:
        return label_priority(setting.failover_priority, dict(node.labels), node.locality, member)
    return failover_priority(setting, node.locality, member[1])


def endpoint_port(instance: WorkloadEndpoint, port: ServicePort) -> int:
    """The instance's port for the service port: its own mapping by port name, else
    the service port's ``target_port``, else the service port number (Istio's rule)."""
    if port.name in instance.ports:
        return instance.ports[port.name]
    if port.target_port is not None:
        return port.target_port
    return port.number


def telemetry_metadata(instance: WorkloadEndpoint) -> str:
    """Istio's endpoint telemetry metadata, as istiod writes it: "workload name;
    namespace;canonical service;canonical revision;cluster" (a revision of
    `latest`, the default, left out). A client names the destination of a
    request no server answered by it (a refused connection, a timeout)."""
    service = canonical_service(instance.labels, instance.workload_name)
    revision = canonical_revision(instance.labels)
    revision = "" if revision == "latest" else revision
    parts = (instance.workload_name, instance.namespace, service, revision, DEFAULT_CLUSTER)
    return ";".join(parts)


def parse_locality(locality: str) -> Locality:
    """``"region/zone/subzone"``, any part possibly missing, as a triple."""
    parts = [*locality.split("/", 2), "", ""] if locality else ["", "", ""]
    return (parts[0], parts[1], parts[2])


def _weight(instance: WorkloadEndpoint) -> int:
    # Istio treats an unset (0) weight as 1; Envoy rejects endpoint weights below 1.
    return max(1, instance.weight)


def _locality_endpoints(
    key: Group, endpoints: Iterable[Entry], weight: int
) -> ec_pb2.LocalityLbEndpoints:
    priority, locality = key
    group = ec_pb2.LocalityLbEndpoints(
        locality=base_pb2.Locality(region=locality[0], zone=locality[1], sub_zone=locality[2]),
        priority=priority,
    )
    for address, port, endpoint_weight, status, workload in endpoints:
        lb_endpoint = group.lb_endpoints.add(health_status=status)
        lb_endpoint.endpoint.address.CopyFrom(
            address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=address, port_value=port)
            )
        )
        lb_endpoint.load_balancing_weight.value = endpoint_weight
        lb_endpoint.metadata.filter_metadata[ISTIO_METADATA].fields[
            "workload"
        ].string_value = workload
    group.load_balancing_weight.value = weight
    return group
