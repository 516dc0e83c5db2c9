"""Who is asking: the few facts about an xDS client that change what it is sent.

Three kinds of client follow the same control plane and accept different shapes
(see /work/shared/XDS_NOTES.md): grpcio's own xDS client, our library, and Envoy.
``NodeInfo.cache_key`` names exactly the node fields ``translate()`` reads, so the
server can translate once per distinct key and share the result between clients.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

DEFAULT_OUTBOUND_PORT = 15001
"""Where an Envoy sidecar listens for outbound traffic when the node does not say
(Istio's ``virtualOutbound`` port)."""

OUTBOUND_PORT_METADATA_KEY = "OUTBOUND_PORT"
LABELS_METADATA_KEY = "LABELS"
"""Istio's node metadata key for the workload's labels (a string -> string struct)."""
NAMESPACE_METADATA_KEY = "NAMESPACE"
SERVICE_ACCOUNT_METADATA_KEY = "SERVICE_ACCOUNT"
INSTANCE_IPS_METADATA_KEY = "INSTANCE_IPS"
"""Istio's keys: the workload's namespace, service account, and its IPs (comma-separated)."""
DEFAULT_NAMESPACE = "default"
ROUTER_ID_PREFIX = "router~"
"""Istio's node id of a gateway (proxy type "router"): the Envoy gets the
listeners of the Gateways selecting its LABELS instead of virtualOutbound."""
SIDECAR_ID_PREFIX = "sidecar~"
"""Istio's node id of a sidecar: here an Envoy run by ``meshctl proxy run``
beside a workload (its agent serves SDS), given the workload's inbound
listeners and mesh mTLS upstream."""
INBOUND_PORTS_METADATA_KEY = "INBOUND_PORTS"
"""A sidecar's "PORT=APP_PORT,...": listen on the workload's declared PORT,
forward to the application on 127.0.0.1:APP_PORT."""
OUTBOUND_TCP_METADATA_KEY = "OUTBOUND_TCP"
"""A sidecar's "HOST:PORT=LOCAL_PORT,...": a listener on 127.0.0.1:LOCAL_PORT
(0: a free port) proxying TCP to the mesh service HOST:PORT (no traffic
capture here, as Istio's Sidecar egress listeners with captureMode NONE)."""
BIND_ADDRESS_METADATA_KEY = "BIND_ADDRESS"
FREE_PORTS_METADATA_KEY = "BIND_FREE_PORTS"
"""A gateway's listen address (default 0.0.0.0) and, when "true", port 0 for
every server (the kernel picks; tests read the ports from Envoy's admin)."""

MESH_USER_AGENT = "proxyless-mesh"
ENVOY_USER_AGENT = "envoy"


class ClientKind(enum.Enum):
    """The shape of configuration a client accepts."""

    GRPC = "grpc"  # grpcio's own xDS client (node.user_agent_name starts with "gRPC")
    MESH = "mesh"  # our library (user_agent_name == "proxyless-mesh")
    ENVOY = "envoy"  # user_agent_name == "envoy"


@dataclass(frozen=True)
class NodeInfo:
    """The translator's view of an xDS node."""

    id: str
    kind: ClientKind
    locality: tuple[str, str, str] = ("", "", "")  # region, zone, sub_zone
    outbound_port: int = DEFAULT_OUTBOUND_PORT
    labels: tuple[tuple[str, str], ...] = ()  # node.metadata LABELS (Istio's key), sorted
    namespace: str = DEFAULT_NAMESPACE  # node.metadata NAMESPACE
    service_account: str = ""  # node.metadata SERVICE_ACCOUNT
    instance_ips: tuple[str, ...] = ()  # node.metadata INSTANCE_IPS, sorted
    router: bool = False  # an Envoy gateway (node id "router~...")
    bind_address: str = "0.0.0.0"  # a gateway's listeners' address
    free_ports: bool = False  # a gateway's listeners on port 0
    sidecar: bool = False  # an Envoy sidecar with an agent (node id "sidecar~...")
    inbound_ports: tuple[tuple[int, int], ...] = ()  # a sidecar's (port, app port), sorted
    outbound_tcp: tuple[tuple[str, int, int], ...] = ()  # a sidecar's (host, port, local port)

    @classmethod
    def from_proto(cls, node: base_pb2.Node) -> NodeInfo:
        """Read a node as sent in a DiscoveryRequest (see `_read`).

        Nodes that differ only in their id (the replicas of a workload; at a
        connect storm, thousands of them) are read once: the rest copy that
        reading with their own id. A node that fails to read is not kept.
        """
        shape = _shape(node)
        found = _SHAPES.get(shape)
        if found is None:
            found = cls._read(node)
            if len(_SHAPES) >= SHAPES_KEPT:  # bounded: per-Pod IPs make many shapes
                _SHAPES.clear()
            _SHAPES[shape] = found
        if found.id == node.id:
            return found
        copy = object.__new__(cls)  # a frozen dataclass's replace(), without its cost
        copy.__dict__.update(found.__dict__)
        object.__setattr__(copy, "id", node.id)
        return copy

    @classmethod
    def _read(cls, node: base_pb2.Node) -> NodeInfo:
        """Read a node as sent in a DiscoveryRequest.

        Unknown user agents are treated as gRPC: the gRPC shape is the one every
        proxyless client accepts (gRPC Java and Go also send "gRPC ..."), and a
        client that cannot take it would fail loudly with a NACK rather than quietly.

        Raises ValueError when an Envoy node's OUTBOUND_PORT metadata is not a port:
        binding the outbound listener to a guessed port would fail silently later.
        """
        kind = _kind_of(node.user_agent_name)
        outbound_port = DEFAULT_OUTBOUND_PORT
        if kind is ClientKind.ENVOY and OUTBOUND_PORT_METADATA_KEY in node.metadata.fields:
            outbound_port = _parse_port(node.metadata.fields[OUTBOUND_PORT_METADATA_KEY], node.id)
        return cls(
            id=node.id,
            kind=kind,
            locality=(node.locality.region, node.locality.zone, node.locality.sub_zone),
            outbound_port=outbound_port,
            labels=_labels(node.metadata.fields.get(LABELS_METADATA_KEY)),
            namespace=_string(node, NAMESPACE_METADATA_KEY) or DEFAULT_NAMESPACE,
            service_account=_string(node, SERVICE_ACCOUNT_METADATA_KEY),
            instance_ips=tuple(
                sorted(
                    {ip.strip() for ip in _string(node, INSTANCE_IPS_METADATA_KEY).split(",")}
                    - {""}
                )
            ),
            router=kind is ClientKind.ENVOY and node.id.startswith(ROUTER_ID_PREFIX),
            bind_address=_string(node, BIND_ADDRESS_METADATA_KEY) or "0.0.0.0",
            free_ports=_string(node, FREE_PORTS_METADATA_KEY) == "true",
            sidecar=kind is ClientKind.ENVOY and node.id.startswith(SIDECAR_ID_PREFIX),
            inbound_ports=_port_pairs(_string(node, INBOUND_PORTS_METADATA_KEY), node.id),
            outbound_tcp=tcp_targets(_string(node, OUTBOUND_TCP_METADATA_KEY), node.id),
        )

    @property
    def cache_key(self) -> tuple[object, ...]:
        """Everything ``translate()`` reads from the node, and nothing else.

        Two nodes with equal keys get identical resources. That is the kind, the
        outbound port for Envoy (proxyless clients have no listening port), and the
        locality and labels: with a DestinationRule's localityLbSetting, EDS
        priorities and weights are computed from where the client runs (and
        failoverPriority compares its labels). Proxyless clients also get their
        inbound (server) listeners, which depend on the workload: namespace and
        labels select its security policies, service account and IPs say which
        instances (ports) are its own. Every kind's namespace decides what `exportTo`
        lets it see. The id is not read; whoever makes
        translate() read more of the node must add it here, or cached translations
        would be shared wrongly.
        """
        if self.kind is ClientKind.ENVOY and self.router:
            gateway = (self.bind_address, self.free_ports, self.namespace)
            return (self.kind.value, "router", self.locality, self.labels, gateway)
        if self.kind is ClientKind.ENVOY and self.sidecar:
            workload = (self.namespace, self.service_account, self.instance_ips)
            sidecar = ("sidecar", self.inbound_ports, self.outbound_tcp)
            return (
                self.kind.value,
                self.outbound_port,
                self.locality,
                self.labels,
                workload,
                sidecar,
            )
        if self.kind is ClientKind.ENVOY:  # the namespace: what exportTo lets it see
            return (self.kind.value, self.outbound_port, self.locality, self.labels, self.namespace)
        workload = (self.namespace, self.service_account, self.instance_ips)
        return (self.kind.value, None, self.locality, self.labels, workload)


SHAPES_KEPT = 4096
"""Distinct node shapes whose reading is kept (then forgotten all at once)."""
_SHAPES: dict[tuple[object, ...], NodeInfo] = {}


def _shape(node: base_pb2.Node) -> tuple[object, ...]:
    """Everything `NodeInfo._read` reads of a node but its id, whose only part
    it reads is the gateway or sidecar prefix."""
    locality = node.locality
    return (
        node.user_agent_name,
        locality.region,
        locality.zone,
        locality.sub_zone,
        node.metadata.SerializeToString(deterministic=True),
        node.id.startswith(ROUTER_ID_PREFIX),
        node.id.startswith(SIDECAR_ID_PREFIX),
    )


def _labels(value: struct_pb2.Value | None) -> tuple[tuple[str, str], ...]:
    """String labels from the LABELS struct; other value types are not labels."""
    if value is None or value.WhichOneof("kind") != "struct_value":
        return ()
    fields = value.struct_value.fields
    return tuple(
        sorted(
            (key, item.string_value)
            for key, item in fields.items()
            if item.WhichOneof("kind") == "string_value"
        )
    )


def _string(node: base_pb2.Node, key: str) -> str:
    value = node.metadata.fields.get(key)
    if value is None or value.WhichOneof("kind") != "string_value":
        return ""
    return str(value.string_value)


def _kind_of(user_agent_name: str) -> ClientKind:
    if user_agent_name == MESH_USER_AGENT:
        return ClientKind.MESH
    if user_agent_name == ENVOY_USER_AGENT:
        return ClientKind.ENVOY
    return ClientKind.GRPC


def _parse_port(value: struct_pb2.Value, node_id: str) -> int:
    kind = value.WhichOneof("kind")
    port: int | None = None
    if kind == "string_value" and value.string_value.strip().isdigit():
        port = int(value.string_value.strip())
    elif kind == "number_value" and float(value.number_value).is_integer():
        port = int(value.number_value)
    if port is None or not 0 <= port <= 65535:  # 0: Envoy binds a free port (tests)
        raise ValueError(
            f"node {node_id!r}: metadata {OUTBOUND_PORT_METADATA_KEY} must be a port "
            f"number 0-65535 (a string or a number), got {_describe(value)}; "
            "fix the Envoy bootstrap's node.metadata"
        )
    return port


def _describe(value: struct_pb2.Value) -> str:
    kind = value.WhichOneof("kind")
    if kind is None:
        return "an empty value"
    return f"{kind} {getattr(value, kind)!r}"


def _port_pairs(text: str, node_id: str) -> tuple[tuple[int, int], ...]:
    """INBOUND_PORTS "8080=9090,..." as sorted (port, app port) pairs."""
    pairs: list[tuple[int, int]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        port, _, app = item.partition("=")
        if not (port.isdigit() and app.isdigit() and 0 < int(port) < 65536 > int(app) > 0):
            raise ValueError(
                f"node {node_id!r}: metadata {INBOUND_PORTS_METADATA_KEY} entry {item!r} is "
                "not PORT=APP_PORT; fix the sidecar's bootstrap"
            )
        pairs.append((int(port), int(app)))
    return tuple(sorted(pairs))


def tcp_targets(text: str, node_id: str) -> tuple[tuple[str, int, int], ...]:
    """OUTBOUND_TCP "host:9000=19000,..." as sorted (host, port, local port)."""
    targets: list[tuple[str, int, int]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        target, _, local = item.partition("=")
        host, _, port = target.rpartition(":")
        if not (host and port.isdigit() and 0 < int(port) < 65536 and local.isdigit()):
            raise ValueError(
                f"node {node_id!r}: metadata {OUTBOUND_TCP_METADATA_KEY} entry {item!r} is "
                "not HOST:PORT=LOCAL_PORT; fix the sidecar's bootstrap"
            )
        if int(local) > 65535:
            raise ValueError(f"node {node_id!r}: {OUTBOUND_TCP_METADATA_KEY} port {local}")
        targets.append((host, int(port), int(local)))
    return tuple(sorted(targets))
