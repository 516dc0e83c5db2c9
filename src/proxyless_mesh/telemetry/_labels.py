"""Who a workload is, as Istio's standard labels name it, and how two mesh
workloads tell each other (Istio's HTTP metadata exchange).

Naming rules (the ones Istio applies to a pod, from the node metadata keys
Istio's own proxies carry: WORKLOAD_NAME, NAMESPACE, LABELS, CLUSTER_ID,
SERVICE_ACCOUNT, MESH_ID):

- workload: WORKLOAD_NAME; else the bootstrap's node cluster (`meshctl
  bootstrap --cluster`); else the `app` label; else the node id without its
  instance suffix, as Istio names a pod's Deployment: `frontend-1` ->
  `frontend`, `reviews-v1-7d9f8b6c4-x2k4p` -> `reviews-v1`.
- canonical service: label `service.istio.io/canonical-name`, else
  `app.kubernetes.io/name`, else `app`, else the workload name.
- canonical revision: `service.istio.io/canonical-revision`, else
  `app.kubernetes.io/version`, else `version`, else `latest`.
- app / version: the `app` (else `app.kubernetes.io/name`) and `version`
  (else `app.kubernetes.io/version`) labels, `unknown` without one.
- cluster: CLUSTER_ID, else `Kubernetes` (istiod's default cluster id).

The exchange is Istio's (its proxies' `istio_headers` discovery): a meshed
client sends `x-envoy-peer-metadata-id` (its node id) and
`x-envoy-peer-metadata` (base64 of a protobuf `google.protobuf.Struct` with
NAME, NAMESPACE, CLUSTER_ID, WORKLOAD_NAME, SERVICE_ACCOUNT, MESH_ID and
LABELS), and a meshed server answers a request that carried them with its
own. The Struct is encoded here by hand (strings and one nested Struct: all
the exchange uses), once per workload; a received value is decoded once and
cached, so no protobuf runs per request. gRPC calls use GRPC_PEER_HEADER
for the Struct instead (grpcio swallows Istio's name).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxyless_mesh.bootstrap import Bootstrap

UNKNOWN = "unknown"
PEER_HEADER = "x-envoy-peer-metadata"
PEER_ID_HEADER = "x-envoy-peer-metadata-id"
#: grpcio's core keeps `x-envoy-peer-metadata` for its own service-mesh
#: observability and never shows it to a Python server: gRPC calls carry
#: the same value under this name (see `grpc_headers`).
GRPC_PEER_HEADER = "x-mesh-peer-metadata"
DEFAULT_CLUSTER = "Kubernetes"
_MAX_HEADER = 4096
_MAX_CACHED_PEERS = 1024
#: A Deployment's pod: <name>-<replicaset hash>-<5 random>, both from
#: Kubernetes' safe alphabet; or a numbered instance, <name>-<n>.
_POD = re.compile(r"^(.+?)-[bcdfghjklmnpqrstvwxz2456789]{6,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$")
_INSTANCE = re.compile(r"^(.+)-\d+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$")
#: The labels the exchange carries (the ones the standard metrics read).
_SENT_LABELS = (
    "app",
    "version",
    "app.kubernetes.io/name",
    "app.kubernetes.io/version",
    "service.istio.io/canonical-name",
    "service.istio.io/canonical-revision",
)


@dataclass(frozen=True, slots=True)
class Peer:
    """The other side of a call, as its labels name it."""

    name: str = UNKNOWN
    namespace: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    cluster: str = UNKNOWN
    canonical_service: str = UNKNOWN
    canonical_revision: str = UNKNOWN


NO_PEER = Peer()


def default_workload_name(node_id: str, labels: Mapping[str, str]) -> str:
    """The workload a node belongs to when nothing names it (see module doc)."""
    app = labels.get("app")
    if app:
        return app
    match = _POD.match(node_id) or _INSTANCE.match(node_id)
    return match.group(1) if match else node_id


def canonical_service(labels: Mapping[str, str], workload: str) -> str:
    for key in ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app"):
        if labels.get(key):
            return labels[key]
    return workload


def canonical_revision(labels: Mapping[str, str]) -> str:
    for key in ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"):
        if labels.get(key):
            return labels[key]
    return "latest"


@dataclass(frozen=True, slots=True)
class Workload:
    """This process as Istio's labels name it (see the module doc's rules)."""

    name: str = UNKNOWN
    namespace: str = UNKNOWN
    principal: str = UNKNOWN  # its SPIFFE ID, reported only on mTLS connections
    labels: Mapping[str, str] = field(default_factory=dict)
    cluster: str = DEFAULT_CLUSTER
    node_id: str = ""
    mesh_id: str = "cluster.local"
    zone: str = ""

    @property
    def peer(self) -> Peer:
        """This workload as its peers' labels see it."""
        labels = self.labels
        return Peer(
            self.name,
            self.namespace,
            labels.get("app") or labels.get("app.kubernetes.io/name") or UNKNOWN,
            labels.get("version") or labels.get("app.kubernetes.io/version") or UNKNOWN,
            self.cluster,
            canonical_service(labels, self.name),
            canonical_revision(labels),
        )

    @property
    def peer_headers(self) -> tuple[tuple[str, str], ...]:
        """The exchange headers this workload sends (and answers with)."""
        peer = self.peer
        labels = {key: self.labels[key] for key in _SENT_LABELS if self.labels.get(key)}
        labels["service.istio.io/canonical-name"] = peer.canonical_service
        labels["service.istio.io/canonical-revision"] = peer.canonical_revision
        account = self.principal.rpartition("/sa/")[2] if "/sa/" in self.principal else ""
        fields: dict[str, str | dict[str, str]] = {
            "NAME": self.node_id or self.name,
            "NAMESPACE": self.namespace,
            "CLUSTER_ID": self.cluster,
            "WORKLOAD_NAME": self.name,
            "MESH_ID": self.mesh_id,
            "LABELS": labels,
        }
        if account:
            fields["SERVICE_ACCOUNT"] = account
        value = base64.b64encode(_encode_struct(fields)).decode("ascii")
        return ((PEER_ID_HEADER, self.node_id or self.name), (PEER_HEADER, value))

    @classmethod
    def from_bootstrap(cls, bootstrap: Bootstrap) -> Workload:
        meta: Mapping[str, Any] = bootstrap.node_metadata
        raw_labels = meta.get("LABELS")
        labels = (
            {str(k): v for k, v in raw_labels.items() if isinstance(v, str)}
            if isinstance(raw_labels, Mapping)
            else {}
        )
        namespace = _str(meta.get("NAMESPACE")) or UNKNOWN
        name = (
            _str(meta.get("WORKLOAD_NAME"))
            or bootstrap.node_cluster
            or default_workload_name(bootstrap.node_id, labels)
        )
        account = _str(meta.get("SERVICE_ACCOUNT"))
        trust = _str(bootstrap.proxyless_mesh.get("trust_domain")) or "cluster.local"
        principal = f"spiffe://{trust}/ns/{namespace}/sa/{account}" if account else UNKNOWN
        return cls(
            name or UNKNOWN,
            namespace,
            principal,
            labels,
            _str(meta.get("CLUSTER_ID")) or DEFAULT_CLUSTER,
            bootstrap.node_id,
            _str(meta.get("MESH_ID")) or trust,
            bootstrap.locality.zone,
        )


def grpc_headers(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The exchange headers as a gRPC call carries them."""
    return tuple((GRPC_PEER_HEADER if k == PEER_HEADER else k, v) for k, v in headers)


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


_peers: dict[str, Peer | None] = {}


def parse_peer(value: str | None) -> Peer | None:
    """The Peer an `x-envoy-peer-metadata` value describes, or None when
    absent or malformed (it comes from the network: bounded, names only).
    Decoded once per distinct value."""
    if not value:
        return None
    cached = _peers.get(value, NO_PEER)
    if cached is not NO_PEER:
        return cached
    peer = _decode_peer(value)
    if len(_peers) < _MAX_CACHED_PEERS:
        _peers[value] = peer
    return peer


def _decode_peer(value: str) -> Peer | None:
    if len(value) > _MAX_HEADER:
        return None
    try:
        fields = _decode_struct(base64.b64decode(value, validate=True), depth=0)
    except (ValueError, binascii.Error, IndexError, UnicodeDecodeError):
        return None
    strings = {k: v for k, v in fields.items() if isinstance(v, str) and _NAME.match(v)}
    raw_labels = fields.get("LABELS")
    labels = (
        {k: v for k, v in raw_labels.items() if isinstance(v, str) and _NAME.match(v)}
        if isinstance(raw_labels, dict)
        else {}
    )
    namespace = strings.get("NAMESPACE")
    name = strings.get("WORKLOAD_NAME") or default_workload_name(strings.get("NAME", ""), labels)
    if not namespace or not name:
        return None
    return Peer(
        name,
        namespace,
        labels.get("app") or labels.get("app.kubernetes.io/name") or UNKNOWN,
        labels.get("version") or labels.get("app.kubernetes.io/version") or UNKNOWN,
        strings.get("CLUSTER_ID") or UNKNOWN,
        canonical_service(labels, name),
        canonical_revision(labels),
    )


_endpoint_peers: dict[str, Peer] = {}


def endpoint_peer(workload: str) -> Peer:
    """The Peer an endpoint's Istio telemetry metadata names ("name;namespace;
    canonical service;canonical revision;cluster", as istiod writes it on EDS
    endpoints), NO_PEER for "" or a malformed value. Empty parts are unknown;
    an empty revision of a named service is Istio's default, `latest`
    (istiod leaves it out).
    The app/version labels are not carried: unknown. Parsed once per value."""
    if not workload:
        return NO_PEER
    cached = _endpoint_peers.get(workload)
    if cached is not None:
        return cached
    parts = workload.split(";")
    peer = NO_PEER
    if len(parts) == 5 and all(not part or _NAME.match(part) for part in parts):
        name, namespace, service, revision, cluster = parts
        peer = Peer(
            name or UNKNOWN,
            namespace or UNKNOWN,
            UNKNOWN,
            UNKNOWN,
            cluster or UNKNOWN,
            service or UNKNOWN,
            revision or ("latest" if service else UNKNOWN),
        )
    if len(_endpoint_peers) < _MAX_CACHED_PEERS:
        _endpoint_peers[workload] = peer
    return peer


def namespace_of(principal: str) -> str:
    """The namespace of a SPIFFE ID `spiffe://td/ns/NS/sa/SA`, or unknown."""
    parts = principal.split("/")
    if len(parts) >= 7 and parts[3] == "ns":
        return parts[4]
    return UNKNOWN


# -- google.protobuf.Struct, by hand ------------------------------------------
# Struct{1: map<string, Value>}; map entry {1: key, 2: Value};
# Value{3: string_value, 5: struct_value}. Only these are written; on
# reading, other Value kinds are skipped.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _encode_struct(fields: Mapping[str, str | Mapping[str, str]]) -> bytes:
    out = b""
    for key in sorted(fields):
        value = fields[key]
        if isinstance(value, str):
            encoded = _field(3, value.encode())
        else:
            encoded = _field(5, _encode_struct(value))
        out += _field(1, _field(1, key.encode()) + _field(2, encoded))
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = data[i]
        i += 1
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return n, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes) -> list[tuple[int, bytes | None]]:
    """(field number, payload) of each field; non-length-delimited: None."""
    out: list[tuple[int, bytes | None]] = []
    i = 0
    while i < len(data):
        tag, i = _read_varint(data, i)
        wire = tag & 7
        if wire == 0:
            _, i = _read_varint(data, i)
            out.append((tag >> 3, None))
        elif wire == 1 or wire == 5:
            i += 8 if wire == 1 else 4
            out.append((tag >> 3, None))
        elif wire == 2:
            length, i = _read_varint(data, i)
            if i + length > len(data):
                raise ValueError("truncated field")
            out.append((tag >> 3, data[i : i + length]))
            i += length
        else:
            raise ValueError(f"wire type {wire}")
    return out


def _decode_struct(data: bytes, depth: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for number, entry in _fields(data):
        if number != 1 or entry is None:
            continue
        key = ""
        value: Any = None
        for part_number, part in _fields(entry):
            if part is None:
                continue
            if part_number == 1:
                key = part.decode()
            elif part_number == 2:
                for kind, payload in _fields(part):
                    if kind == 3 and payload is not None:
                        value = payload.decode()
                    elif kind == 5 and payload is not None and depth == 0:
                        value = _decode_struct(payload, depth + 1)
        if key and value is not None:
            result[key] = value
    return result


def label_prefix(
    reporter: str,
    me: Workload,
    peer: Peer,
    service: tuple[str, str, str],
    secure: bool,
    peer_principal: str,
) -> tuple[str, ...]:
    """The labels of metrics/LABELS up to `request_protocol` (exclusive) for
    one (reporter, peer, service, security): what does not change from one
    request to the next. Istio's semantics per side: the source reporter's
    own principal and the peer's are known only over mTLS; the destination
    trusts the peer's exchange header only where it agrees with the
    peer's verified SPIFFE ID, and otherwise names the caller by that ID."""
    host, name, namespace = service
    mine = me.peer
    if reporter == "source":
        source, destination = mine, peer
        source_principal = me.principal if secure else UNKNOWN
        destination_principal = peer_principal if secure else UNKNOWN
        policy = UNKNOWN  # Istio: only the destination knows what it accepted
    else:
        verified = namespace_of(peer_principal)
        if verified != UNKNOWN and verified != peer.namespace:
            peer = Peer(namespace=verified)  # a header at odds with the certificate
        elif peer.namespace == UNKNOWN:
            peer = Peer(namespace=verified)
        source, destination = peer, mine
        source_principal = peer_principal
        destination_principal = me.principal if secure else UNKNOWN
        policy = "mutual_tls" if secure else "none"
    return (
        reporter,
        source.name, source.namespace, source_principal, source.app, source.version,
        source.cluster, source.canonical_service, source.canonical_revision,
        destination.name, destination.namespace, destination_principal, destination.app,
        destination.version, destination.cluster, destination.canonical_service,
        destination.canonical_revision,
        host, name, namespace,
        policy,
    )  # fmt: skip
