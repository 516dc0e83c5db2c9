"""Inbound (server-side) listeners: what a workload's server enforces on a port.

gRPC servers (``grpc.server(xds=True)``) and the library ask for
``grpc/server?xds.resource.listening_address=IP:PORT`` (gRFC A36). The
translator is a function of the node, not of the names asked for, so it emits
the listeners the node's workload can ask for: for every HTTP/HTTP2/GRPC port
of every registry instance that is this workload (its address is one of the
node's INSTANCE_IPS when the node sends them; else its serviceAccount is the
node's SERVICE_ACCOUNT), one listener per bind address: the instance address,
``0.0.0.0`` and ``[::]``. Any other name is answered as absent. Envoy gets none (it is used
as a client-side proxy here, and would try to bind them).

The library also gets ``virtualInbound`` (``proxyless_mesh.model.INBOUND_PASSTHROUGH``),
Istio's inbound passthrough: a server on a port nothing declares (or running under
a service account no instance names) still enforces the PeerAuthentication and the
AuthorizationPolicies that select the node's namespace and labels. gRPC servers
need none: grpcio does not serve a port whose listener does not exist.

Each listener: ``address`` = the IP:PORT of its name; filter chains with an
HttpConnectionManager whose inline route table has one ``*`` virtual host and
one ``non_forwarding_action`` route (A36); HTTP filters: jwt_authn (library
only: gRPC does not implement it), the RBAC engines in Istio's order (AUDIT as
LOG, DENY, ALLOW; from ``proxyless_mesh.policy``), router.

mTLS per PeerAuthentication (workload selector > namespace > root namespace;
UNSET inherits; a workload policy's portLevelMtls wins for its port; nothing
set: PERMISSIVE, Istio's default):
- STRICT: one TLS chain (client certificate required).
- DISABLE: one plaintext chain.
- PERMISSIVE, library: a TLS chain (``transport_protocol: tls``) and a
  plaintext chain (``raw_buffer``) with the tls_inspector listener filter,
  Envoy's form. gRPC cannot tell them apart (A36: ``transport_protocol`` only
  matches "raw_buffer", ``listener_filters`` are NACKed), so gRPC servers get
  the TLS chain alone: mesh clients use mTLS by default (auto mTLS), and a
  plaintext client of a gRPC server needs DISABLE on that port.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from mesh_control_plane.config.authorization import (
    authorization_policies_to_rbac,
    request_authentications_to_jwt,
    selects_workload,
)
from mesh_control_plane.config.model import MeshConfig, PeerAuthentication, WorkloadEndpoint
from mesh_control_plane.registry.static import Registry
from mesh_control_plane.translate.endpoints import endpoint_port
from mesh_control_plane.translate.ext_authz_protos import ext_authz_filters
from mesh_control_plane.translate.index import MeshIndex
from mesh_control_plane.translate.names import server_listener_name
from mesh_control_plane.translate.node import ClientKind, NodeInfo
from mesh_control_plane.translate.protos import HCM_FILTER, pack, router_filter
from mesh_control_plane.translate.rbac_protos import (
    JWT_FILTER_NAME,
    RBAC_FILTER_NAME,
    jwt_authentication_to_proto,
    rbac_filters_to_proto,
)
from mesh_control_plane.translate.tls import downstream_transport_socket
from proxyless_mesh.model import INBOUND_PASSTHROUGH, INBOUND_PASSTHROUGH_PORT, Rbac, RbacAction

WILDCARD_ADDRESSES = ("0.0.0.0", "::")
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
MTLS_CHAIN = "inbound-mtls"
PLAINTEXT_CHAIN = "inbound-plaintext"
_RBAC_NAMES = {
    RbacAction.LOG: f"{RBAC_FILTER_NAME}.audit",
    RbacAction.DENY: f"{RBAC_FILTER_NAME}.deny",
    RbacAction.ALLOW: f"{RBAC_FILTER_NAME}.allow",
}


def inbound_listeners(
    config: MeshConfig, index: MeshIndex, registry: Registry, node: NodeInfo
) -> list[listener_pb2.Listener]:
    """The server listeners `node` may ask for (none for Envoy)."""
    if node.kind is ClientKind.ENVOY:
        return []
    filters = http_filters(config, node, workload_hosts(index, registry, node))
    normalization = config.settings.path_normalization
    listeners: dict[str, listener_pb2.Listener] = {}
    for address, port in sorted(workload_ports(index, registry, node)):
        mode = peer_mode(config, node, port)
        for ip in (address, *WILDCARD_ADDRESSES):
            name = server_listener_name(ip, port)
            listeners[name] = server_listener(
                name, ip, port, mode, filters, node.kind, normalization
            )
    if node.kind is ClientKind.MESH:
        # Istio's inbound passthrough: what a port nobody declared enforces.
        # Workload-wide modes only (portLevelMtls names declared ports).
        listeners[INBOUND_PASSTHROUGH] = server_listener(
            INBOUND_PASSTHROUGH,
            WILDCARD_ADDRESSES[0],
            INBOUND_PASSTHROUGH_PORT,
            peer_mode(config, node, 0),
            filters,
            node.kind,
            normalization,
        )
    return list(listeners.values())


def workload_ports(
    index: MeshIndex, registry: Registry, node: NodeInfo, protocols: Collection[str] = ()
) -> set[tuple[str, int]]:
    """(address, port) of every HTTP-family port (or port of `protocols`) of
    the node's own instances."""
    return set(workload_port_hosts(index, registry, node, protocols))


def workload_port_hosts(
    index: MeshIndex, registry: Registry, node: NodeInfo, protocols: Collection[str] = ()
) -> dict[tuple[str, int], str]:
    """workload_ports, each with the first (by name) service host it serves."""
    found: dict[tuple[str, int], str] = {}
    for host, service in index.services.items():
        ports = service.http_ports
        if protocols:
            ports = tuple(p for p in service.ports if p.protocol in protocols)
        for instance in registry.get(host, ()):
            if ports and _is_node(instance, node):
                for p in ports:
                    key = (instance.address, endpoint_port(instance, p))
                    found[key] = min(host, found.get(key, host))
    return found


def workload_hosts(index: MeshIndex, registry: Registry, node: NodeInfo) -> frozenset[str]:
    """The services the node's workload is an instance of (for `targetRefs`)."""
    return frozenset(
        host
        for host in index.services
        if any(_is_node(instance, node) for instance in registry.get(host, ()))
    )


def _is_node(instance: WorkloadEndpoint, node: NodeInfo) -> bool:
    """Is `instance` the node's workload? By address when the node sends its
    INSTANCE_IPS (and then service accounts must not contradict), else by
    service account; a node that says neither has no inbound listeners."""
    if node.instance_ips:
        if instance.address not in node.instance_ips:
            return False
        return not (
            node.service_account
            and instance.service_account
            and instance.service_account != node.service_account
        )
    return bool(node.service_account) and instance.service_account == node.service_account


def peer_mode(config: MeshConfig, node: NodeInfo, port: int) -> str:
    """STRICT, PERMISSIVE or DISABLE for the node's `port`, Istio's precedence."""
    labels = dict(node.labels)
    root = config.settings.root_namespace
    workload = namespace = mesh = None
    for pa in config.peer_authentications:  # sorted by namespace, name: first wins
        ns = pa.meta.namespace
        if ns == node.namespace and pa.selector is not None:
            if workload is None and all(labels.get(k) == v for k, v in pa.selector.items()):
                workload = pa
        elif ns == node.namespace and pa.selector is None:
            namespace = namespace or pa
        elif ns == root and pa.selector is None:
            mesh = mesh or pa
    chain: list[PeerAuthentication] = [p for p in (workload, namespace, mesh) if p is not None]
    for pa in chain:
        mode = pa.port_modes.get(port, "UNSET") if pa is workload else "UNSET"
        if mode == "UNSET":
            mode = pa.mode
        if mode != "UNSET":
            return mode
    return "PERMISSIVE"


def http_filters(
    config: MeshConfig, node: NodeInfo, services: frozenset[str] = frozenset()
) -> list[hcm_pb2.HttpFilter]:
    """jwt_authn (library and Envoy sidecars: gRPC does not implement it), then
    the RBAC engines, for the node's workload (an instance of `services`)."""
    labels = dict(node.labels)
    root = config.settings.root_namespace
    filters: list[hcm_pb2.HttpFilter] = []
    if node.kind is ClientKind.MESH or node.sidecar:
        authn = [
            ra.resource()
            for ra in config.request_authentications
            if selects_workload(ra.resource(), node.namespace, labels, root, services)
        ]
        if authn:
            jwt = jwt_authentication_to_proto(request_authentications_to_jwt(authn))
            filters.append(hcm_pb2.HttpFilter(name=JWT_FILTER_NAME, typed_config=pack(jwt)))
    policies = [
        ap.resource()
        for ap in config.authorization_policies
        if selects_workload(ap.resource(), node.namespace, labels, root, services)
    ]
    engines = list(authorization_policies_to_rbac(policies, dict(config.extension_providers)))
    if engines and engines[0].ext_authz is not None:  # CUSTOM, first as in istiod
        custom = engines.pop(0)
        if node.kind is ClientKind.GRPC:  # no ext_authz in grpcio: what CUSTOM matches is denied
            engines = _denying(custom, engines)
        else:
            filters.extend(ext_authz_filters(custom))
    for action, rbac in rbac_filters_to_proto(engines):
        filters.append(hcm_pb2.HttpFilter(name=_RBAC_NAMES[action], typed_config=pack(rbac)))
    return filters


def _denying(custom: Rbac, engines: list[Rbac]) -> list[Rbac]:
    """The CUSTOM rules added to the enforcing DENY engine (made when none)."""
    for i, engine in enumerate(engines):
        if engine.action is RbacAction.DENY and not engine.shadow:
            engines[i] = Rbac(RbacAction.DENY, custom.policies + engine.policies)
            return engines
    at = next((i for i, e in enumerate(engines) if e.action is RbacAction.ALLOW), len(engines))
    return [*engines[:at], Rbac(RbacAction.DENY, custom.policies), *engines[at:]]


def server_listener(
    name: str,
    ip: str,
    port: int,
    mode: str,
    filters: Iterable[hcm_pb2.HttpFilter],
    kind: ClientKind,
    path_normalization: str = "BASE",
) -> listener_pb2.Listener:
    manager = _connection_manager(port, filters)
    if kind is ClientKind.MESH:
        # Only our library gets these HCM fields: it applies them before
        # authorization exactly as Envoy does. gRPC servers match RBAC on the
        # path as received and are not sent what they would not apply.
        apply_normalization(manager, path_normalization)
    listener = listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=ip, port_value=port)
        ),
    )
    if mode == "DISABLE":
        listener.filter_chains.append(_chain(PLAINTEXT_CHAIN, manager, tls=False))
    elif mode == "PERMISSIVE" and kind is ClientKind.MESH:
        listener.filter_chains.append(_chain(MTLS_CHAIN, manager, tls=True, protocol="tls"))
        listener.filter_chains.append(
            _chain(PLAINTEXT_CHAIN, manager, tls=False, protocol="raw_buffer")
        )
        listener.listener_filters.append(
            lc_pb2.ListenerFilter(
                name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
            )
        )
    else:  # STRICT, and PERMISSIVE for gRPC (see the module docstring)
        listener.filter_chains.append(_chain(MTLS_CHAIN, manager, tls=True))
    return listener


def _chain(
    name: str, manager: hcm_pb2.HttpConnectionManager, *, tls: bool, protocol: str = ""
) -> lc_pb2.FilterChain:
    chain = lc_pb2.FilterChain(
        name=name, filters=[lc_pb2.Filter(name=HCM_FILTER, typed_config=pack(manager))]
    )
    if protocol:
        chain.filter_chain_match.transport_protocol = protocol
    if tls:
        chain.transport_socket.CopyFrom(downstream_transport_socket())
    return chain


def apply_normalization(manager: hcm_pb2.HttpConnectionManager, mode: str) -> None:
    """Istio's pathNormalization in Envoy's HCM terms: BASE normalizes
    (RFC 3986); MERGE_SLASHES also merges slashes; DECODE_AND_MERGE_SLASHES
    also decodes escaped slashes before matching."""
    manager.normalize_path.value = True
    if mode in ("MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"):
        manager.merge_slashes = True
    if mode == "DECODE_AND_MERGE_SLASHES":
        manager.path_with_escaped_slashes_action = (
            hcm_pb2.HttpConnectionManager.UNESCAPE_AND_FORWARD
        )


def _connection_manager(
    port: int, filters: Iterable[hcm_pb2.HttpFilter]
) -> hcm_pb2.HttpConnectionManager:
    route = route_components_pb2.Route(
        name="inbound", match=route_components_pb2.RouteMatch(prefix="/")
    )
    route.non_forwarding_action.SetInParent()
    routes = route_pb2.RouteConfiguration(
        name=f"inbound|{port}",
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=f"inbound|http|{port}", domains=["*"], routes=[route]
            )
        ],
    )
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=f"inbound_{port}",
        route_config=routes,
        http_filters=[*filters, router_filter()],
    )
