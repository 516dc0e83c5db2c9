"""An Envoy sidecar's TCP ports (``meshctl proxy run``), inbound and outbound.

Inbound, a declared TCP port of the node's own instances that INBOUND_PORTS
maps to an application port gets a listener ``inbound|<port>`` like an HTTP
one (sidecar.py: filter chains per PeerAuthentication, the workload
certificate by SDS), whose chains run the AuthorizationPolicies' TCP part as
Envoy's network RBAC filters, then tcp_proxy to the application. What the TCP
part is, as Istio says for TCP workloads: a rule of an ALLOW policy that uses
an HTTP-only field (a request principal, hosts, methods, paths, a
``request.*`` condition) is dropped, as it can never match (so a policy left
with no rule allows nothing); in a DENY policy the HTTP-only fields are
dropped from the rule, which then denies more; AUDIT logs nothing on TCP.
CUSTOM: Istio applies an HTTP provider (envoyExtAuthzHttp) to HTTP traffic
only, so it is left out here; a gRPC provider is asked once per connection
(network ext_authz) when a rule matches it, rules using HTTP-only fields
being dropped as for ALLOW.

Outbound, each OUTBOUND_TCP entry ``HOST:PORT=LOCAL_PORT`` gets a listener
``outbound|<port>||<host>`` on 127.0.0.1:LOCAL_PORT (0: a free port) that
proxies to the service's cluster, with the cluster's upstream TLS (mesh mTLS
by SDS): without traffic capture the application dials the local port, as
with Istio's Sidecar egress listeners in captureMode NONE.

Both report Istio's TCP metrics through the agent (translate/tcp_telemetry.py):
inbound as reporter "destination" (its service: the port's), outbound as
"source".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from mesh_control_plane.config.authorization import (
    authorization_policies_to_rbac,
    selects_workload,
)
from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.registry.static import Registry
from mesh_control_plane.translate.ext_authz_protos import network_ext_authz_filters
from mesh_control_plane.translate.inbound import peer_mode, workload_port_hosts
from mesh_control_plane.translate.index import MeshIndex
from mesh_control_plane.translate.names import cluster_name
from mesh_control_plane.translate.node import NodeInfo
from mesh_control_plane.translate.protos import pack
from mesh_control_plane.translate.rbac_protos import rbac_filters_to_proto
from mesh_control_plane.translate.sidecar import (
    add_peer_chains,
    app_cluster,
    inbound_cluster_name,
)
from mesh_control_plane.translate.tcp_telemetry import add_tcp_telemetry
from proxyless_mesh.model import ExtAuthz

TCP_PROXY = "envoy.filters.network.tcp_proxy"
NETWORK_RBAC = "envoy.filters.network.rbac"
OUTBOUND_ADDRESS = "127.0.0.1"
_HTTP_SOURCE = ("requestPrincipals", "notRequestPrincipals")
_HTTP_OPERATION = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")


def sidecar_tcp_inbound(
    config: MeshConfig, index: MeshIndex, registry: Registry, node: NodeInfo
) -> tuple[list[listener_pb2.Listener], list[cluster_pb2.Cluster]]:
    app_ports = dict(node.inbound_ports)
    rbac = tcp_rbac_filters(config, node)
    listeners: dict[str, listener_pb2.Listener] = {}
    clusters: dict[str, cluster_pb2.Cluster] = {}
    hosts = workload_port_hosts(index, registry, node, ("TCP",))
    for (address, port), host in sorted(hosts.items()):
        if port not in app_ports:
            continue
        proxy = tcp_proxy_pb2.TcpProxy(
            stat_prefix=f"inbound_{port}", cluster=inbound_cluster_name(port)
        )
        add_tcp_telemetry(proxy, "destination", host)
        listener = listener_pb2.Listener(
            name=f"inbound|{port}",
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=address, port_value=port)
            ),
        )
        filters = [*rbac, lc_pb2.Filter(name=TCP_PROXY, typed_config=pack(proxy))]
        add_peer_chains(listener, peer_mode(config, node, port), filters)
        listeners.setdefault(listener.name, listener)
        clusters[inbound_cluster_name(port)] = app_cluster(port, app_ports[port])
    return list(listeners.values()), list(clusters.values())


def sidecar_tcp_outbound(node: NodeInfo) -> list[listener_pb2.Listener]:
    listeners = []
    for host, port, local in node.outbound_tcp:
        name = cluster_name(host, port)
        proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster=name)
        add_tcp_telemetry(proxy, "source")
        listener = listener_pb2.Listener(
            name=name,
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=OUTBOUND_ADDRESS, port_value=local)
            ),
            filter_chains=[
                lc_pb2.FilterChain(
                    filters=[lc_pb2.Filter(name=TCP_PROXY, typed_config=pack(proxy))]
                )
            ],
        )
        listeners.append(listener)
    return listeners


def tcp_rbac_filters(config: MeshConfig, node: NodeInfo) -> list[lc_pb2.Filter]:
    """The network RBAC filters of the policies selecting the node, by their
    TCP part (the module docstring)."""
    labels = dict(node.labels)
    root = config.settings.root_namespace
    providers = dict(config.extension_providers)
    policies = [
        tcp
        for ap in config.authorization_policies
        if selects_workload(ap.resource(), node.namespace, labels, root)
        and (tcp := tcp_part(_custom_on_tcp(ap.resource(), providers))) is not None
    ]
    engines = authorization_policies_to_rbac(policies, providers)
    filters = [
        f
        for engine in engines
        if engine.ext_authz is not None and engine.ext_authz.grpc
        for f in network_ext_authz_filters(engine, "tcp.")
    ]
    plain = [e for e in engines if e.ext_authz is None]
    for action, http in rbac_filters_to_proto(plain):
        rbac = network_rbac_pb2.RBAC(stat_prefix=f"tcp.{action.value.lower()}.")
        if http.HasField("rules"):
            rbac.rules.CopyFrom(http.rules)
        if http.HasField("shadow_rules"):
            rbac.shadow_rules.CopyFrom(http.shadow_rules)
            rbac.shadow_rules_stat_prefix = http.shadow_rules_stat_prefix
        name = f"{NETWORK_RBAC}.{action.value.lower()}"
        filters.append(lc_pb2.Filter(name=name, typed_config=pack(rbac)))
    return filters


def _custom_on_tcp(
    resource: Mapping[str, Any], providers: Mapping[str, ExtAuthz]
) -> Mapping[str, Any]:
    """A CUSTOM policy of an HTTP provider as AUDIT (nothing on TCP, the
    module docstring); other policies as they are."""
    spec = resource.get("spec") or {}
    if spec.get("action") != "CUSTOM":
        return resource
    provider = providers.get(str((spec.get("provider") or {}).get("name", "")))
    if provider is not None and provider.grpc:
        return resource
    kept = {k: v for k, v in spec.items() if k != "provider"}
    return {**resource, "spec": {**kept, "action": "AUDIT"}}


def tcp_part(resource: Mapping[str, Any]) -> dict[str, Any] | None:
    """`resource` as Istio applies it to TCP traffic; None: nothing (AUDIT)."""
    spec = resource.get("spec") or {}
    action = str(spec.get("action", "ALLOW"))
    if action == "AUDIT":
        return None
    rules = spec.get("rules")
    if not isinstance(rules, list):
        return dict(resource)
    if action == "DENY":
        kept = [_without_http(rule) for rule in rules]
    else:
        kept = [rule for rule in rules if _without_http(rule) == rule]
    return {**resource, "spec": {**spec, "rules": kept}}


def _without_http(rule: Mapping[str, Any]) -> dict[str, Any]:
    """`rule` without its HTTP-only fields."""
    out = dict(rule)
    if isinstance(rule.get("from"), list):
        out["from"] = [_drop(item, "source", _HTTP_SOURCE) for item in rule["from"]]
    if isinstance(rule.get("to"), list):
        out["to"] = [_drop(item, "operation", _HTTP_OPERATION) for item in rule["to"]]
    if isinstance(rule.get("when"), list):
        out["when"] = [
            c for c in rule["when"] if not str((c or {}).get("key", "")).startswith("request.")
        ]
    return out


def _drop(item: Any, inner: str, fields: tuple[str, ...]) -> Any:
    if not isinstance(item, Mapping) or not isinstance(item.get(inner), Mapping):
        return item
    kept = {k: v for k, v in item[inner].items() if k not in fields}
    return {**item, inner: kept}
