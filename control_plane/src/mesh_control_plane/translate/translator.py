"""translate(): config + registry + client node -> the client's xDS resources.

A pure function, like Istio's ConfigGenerator and Kuma's generators: every input is
an argument, nothing is read from the environment or the clock, and equal inputs
give byte-identical output (everything is sorted). So the server may cache a result
by (config, registry, ``node.cache_key``) and push only when it changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from types import MappingProxyType

from google.protobuf.message import Message

from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.config.visibility import visible_to
from mesh_control_plane.registry.static import Registry
from mesh_control_plane.translate.clusters import ClusterSpec, build_cluster, cluster_specs
from mesh_control_plane.translate.endpoints import build_load_assignment, endpoint_port
from mesh_control_plane.translate.gateway import gateway_listeners, gateways_of
from mesh_control_plane.translate.gateway_sni import sni_dnat_clusters
from mesh_control_plane.translate.inbound import inbound_listeners, peer_mode
from mesh_control_plane.translate.index import MeshIndex
from mesh_control_plane.translate.listeners import api_listener, envoy_outbound_listener
from mesh_control_plane.translate.names import ENVOY_OUTBOUND, authority
from mesh_control_plane.translate.node import ClientKind, NodeInfo
from mesh_control_plane.translate.outbound_policy import (
    ALLOW_ANY,
    catch_all_virtual_host,
    envoy_mode,
    outbound_policy_listeners,
    passthrough_clusters,
    passthrough_filter,
)
from mesh_control_plane.translate.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    ResourceSet,
)
from mesh_control_plane.translate.routes import route_configuration, virtual_host
from mesh_control_plane.translate.sds import gateway_origination_socket, gateway_upstream_socket
from mesh_control_plane.translate.sidecar import sidecar_inbound
from mesh_control_plane.translate.sidecar_tcp import sidecar_tcp_inbound, sidecar_tcp_outbound
from mesh_control_plane.translate.telemetry import attach_telemetry, telemetry_specs
from mesh_control_plane.translate.tls import (
    ORIGINATION_MODES,
    cluster_instances,
    origination_socket,
    upstream_identities,
    upstream_sni,
    upstream_transport_socket,
)


@dataclass(frozen=True, slots=True)
class Translation:
    """translate()'s result with the parts an endpoints-only update reuses
    (incremental.py): everything but clusters, assignments and inbound listeners
    depends on the config alone."""

    index: MeshIndex
    specs: tuple[ClusterSpec, ...]
    clusters: tuple[Message, ...]  # one per spec
    assignments: tuple[Message, ...]  # one per spec
    outbound: tuple[tuple[Message, ...], tuple[Message, ...]]  # listeners, routes
    resource_set: ResourceSet


def translate(config: MeshConfig, registry: Registry, node: NodeInfo) -> ResourceSet:
    """All resources ``node`` may ask for.

    Proxyless clients (GRPC, MESH) get, per HTTP/HTTP2/GRPC service port, a listener
    and a route configuration named ``<host>:<port>``; Envoy gets the single
    ``virtualOutbound`` listener and route configuration covering the same virtual
    hosts, then Istio's catch-all for other hosts (outbound_policy.py); a gateway
    Envoy (node ``router~``) gets instead the listeners and routes
    of the Gateways selecting it (gateway.py), a sidecar Envoy (``sidecar~``) also
    its workload's inbound listeners (sidecar.py), both mesh mTLS by SDS (sds.py).
    Clusters and endpoints are the same for all kinds, except that gRPC gets
    only the load-balancing policies it implements and Envoy is told to use HTTP/2
    towards HTTP2/GRPC ports, and EDS priorities and weights follow the node's
    locality where a DestinationRule asks for it. Proxyless clients also get
    upstream mTLS on clusters (tls.py) and their workload's inbound listeners
    (inbound.py). Reads only ``node.cache_key``'s fields.
    """
    return full_translation(config, registry, node).resource_set


def full_translation(config: MeshConfig, registry: Registry, node: NodeInfo) -> Translation:
    """translate(), keeping the parts."""
    config = _visible(config, node)
    index = MeshIndex.build(config)
    specs = tuple(cluster_specs(index))
    if node.router:
        listeners, routes = gateway_listeners(config, index, node)
    elif node.kind is ClientKind.ENVOY:
        listeners, routes = _envoy_listeners(index, node.outbound_port, envoy_mode(config, node))
    else:
        listeners, routes = _proxyless_listeners(index)
        if node.kind is ClientKind.MESH:
            listeners += outbound_policy_listeners(config, node)  # a Sidecar's mode
            attach_telemetry(listeners, telemetry_specs(config, node))
    return _assemble(
        config,
        registry,
        node,
        index,
        specs,
        [_cluster(spec, config, registry, node) for spec in specs],
        [build_load_assignment(spec, registry, node) for spec in specs],
        (tuple(listeners), tuple(routes)),
    )


def update_endpoints(
    previous: Translation,
    config: MeshConfig,
    registry: Registry,
    node: NodeInfo,
    hosts: Set[str],
) -> Translation:
    """``previous`` for a config that differs from its own only in the instances of
    ``hosts``: their clusters (upstream identities) and assignments are rebuilt,
    with the inbound listeners; every other message is reused as it is."""
    config = _visible(config, node)  # as full_translation saw it
    clusters = list(previous.clusters)
    assignments = list(previous.assignments)
    for i, spec in enumerate(previous.specs):
        if spec.service.host in hosts:
            clusters[i] = _cluster(spec, config, registry, node)
            assignments[i] = build_load_assignment(spec, registry, node)
    return _assemble(
        config,
        registry,
        node,
        previous.index,
        previous.specs,
        clusters,
        assignments,
        previous.outbound,
    )


def _visible(config: MeshConfig, node: NodeInfo) -> MeshConfig:
    """exportTo: only what its namespace may see; a Sidecar: only what it
    imports (gateways have no Sidecar)."""
    return visible_to(config, node.namespace, None if node.router else dict(node.labels))


def _cluster(spec: ClusterSpec, config: MeshConfig, registry: Registry, node: NodeInfo) -> Message:
    """The spec's cluster, with upstream mTLS for proxyless clients when its
    instances (or its DestinationRule) call for it."""
    cluster: Message = build_cluster(spec, node.kind)
    tls = spec.policy.tls
    if tls is not None and tls.mode in ORIGINATION_MODES:  # the same for every kind
        # credentialName is for gateways (Istio): other clients use the files.
        by_credential = node.router and tls.credential_name
        originate = gateway_origination_socket if by_credential else origination_socket
        origination = originate(tls, upstream_sni(spec))
        cluster.transport_socket.CopyFrom(origination)  # type: ignore[attr-defined]
        return cluster
    # An Envoy run by an agent (gateway, sidecar) has its workload certificate
    # by SDS (sds.py); a bare Envoy has none.
    by_sds = node.router or node.sidecar
    if node.kind is ClientKind.ENVOY and not by_sds:
        return cluster
    identities = upstream_identities(spec, registry, config.settings)
    auto = tls is None  # auto mTLS defers to the peers' mode
    if identities is not None and auto and _peers_refuse_mtls(config, spec, registry):
        identities = None
    if identities is not None:
        make_socket = gateway_upstream_socket if by_sds else upstream_transport_socket
        socket = make_socket(identities, upstream_sni(spec))
        cluster.transport_socket.CopyFrom(socket)  # type: ignore[attr-defined]
    return cluster


def _assemble(
    config: MeshConfig,
    registry: Registry,
    node: NodeInfo,
    index: MeshIndex,
    specs: tuple[ClusterSpec, ...],
    clusters: Sequence[Message],
    assignments: Sequence[Message],
    outbound: tuple[tuple[Message, ...], tuple[Message, ...]],
) -> Translation:
    inbound = inbound_listeners(config, index, registry, node)
    if node.kind is ClientKind.MESH:
        attach_telemetry(inbound, telemetry_specs(config, node))
    app_clusters: Sequence[Message] = ()
    if node.sidecar:  # the workload's inbound listeners and its app's clusters
        sidecar_listeners, app_clusters = sidecar_inbound(config, index, registry, node)
        tcp_listeners, tcp_clusters = sidecar_tcp_inbound(config, index, registry, node)
        inbound += [*sidecar_listeners, *tcp_listeners, *sidecar_tcp_outbound(node)]
        app_clusters = [*app_clusters, *tcp_clusters]
    if node.router:  # AUTO_PASSTHROUGH servers' SNI-DNAT clusters (gateway_sni.py)
        app_clusters = sni_dnat_clusters(gateways_of(config, node), specs, node)
    elif node.kind is ClientKind.ENVOY:  # ALLOW_ANY's PassthroughCluster
        app_clusters = [*app_clusters, *passthrough_clusters(envoy_mode(config, node))]
    resources = {
        LISTENER: _by_name([*outbound[0], *inbound]),
        ROUTE: _by_name(outbound[1]),
        CLUSTER: _by_name([*clusters, *app_clusters]),
        ENDPOINT: _by_name(assignments, name_field="cluster_name"),
    }
    resource_set = ResourceSet(
        MappingProxyType(resources), undefined_subsets=_undefined_subsets(config)
    )
    return Translation(index, specs, tuple(clusters), tuple(assignments), outbound, resource_set)


def _undefined_subsets(config: MeshConfig) -> frozenset[tuple[str, str]]:
    defined = {(dr.host, s.name) for dr in config.destination_rules for s in dr.subsets}
    named = {
        (d.host, d.subset)
        for vs in config.virtual_services
        for route in vs.http
        for d in [*(rd.destination for rd in route.route), *(m.destination for m in route.mirrors)]
        if d.subset is not None
    }
    return frozenset(named - defined)


def _proxyless_listeners(index: MeshIndex) -> tuple[list[Message], list[Message]]:
    listeners: list[Message] = []
    routes: list[Message] = []
    for service in index.services.values():
        for port in service.http_ports:
            vhost = virtual_host(index, service, port.number, disable_default_timeout=False)
            # Clients ask by the authority they call: the host, or one of its addresses.
            for address in (service.host, *service.addresses):
                name = authority(address, port.number)
                listeners.append(api_listener(name))
                routes.append(route_configuration(name, [vhost]))
    return listeners, routes


def _envoy_listeners(
    index: MeshIndex, outbound_port: int, mode: str
) -> tuple[list[Message], list[Message]]:
    vhosts = [
        virtual_host(index, service, port.number, disable_default_timeout=True)
        for service in index.services.values()
        for port in service.http_ports
    ]
    # Always sent, even with no HTTP services (the catch-all alone).
    table = route_configuration(ENVOY_OUTBOUND, vhosts)
    # Last, as Istio's: hosts outside the mesh, blocked or passed through
    # (outbound_policy.py).
    table.virtual_hosts.append(catch_all_virtual_host(mode))
    filters = [passthrough_filter()] if mode == ALLOW_ANY else []
    return [envoy_outbound_listener(outbound_port, filters)], [table]


def _by_name(
    messages: Iterable[Message], name_field: str = "name"
) -> MappingProxyType[str, Message]:
    named = {getattr(message, name_field): message for message in messages}
    return MappingProxyType({name: named[name] for name in sorted(named)})


def _peers_refuse_mtls(config: MeshConfig, spec: ClusterSpec, registry: Registry) -> bool:
    """Istio's auto mTLS asks the destination: a workload whose
    PeerAuthentication (for that port) is DISABLE is sent plaintext. A cluster
    has one transport socket, so one such instance makes it plaintext."""
    for instance in cluster_instances(spec, registry):
        workload = NodeInfo(
            id="",
            kind=ClientKind.MESH,
            labels=tuple(sorted(instance.labels.items())),
            namespace=spec.service.namespace,
        )
        if peer_mode(config, workload, endpoint_port(instance, spec.port)) == "DISABLE":
            return True
    return False
