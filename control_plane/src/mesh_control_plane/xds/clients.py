"""What the control plane remembers about each connected xDS client.

One `ClientRecord` per ADS stream. It is both the protocol state the server
needs (what each type is subscribed to, what was last sent under which nonce)
and what `meshctl status` shows (what the client ACKed or NACKed), so the two
can never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from mesh_control_plane.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE
from mesh_control_plane.xds.snapshot import PackedResource

if TYPE_CHECKING:
    from mesh_control_plane.xds.responses import PreparedResponse

# LDS and CDS are the types a SotW client may subscribe to as a wildcard
# (empty resource_names on its first request); RDS and EDS are always by name.
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})

# Push order on a config change: clusters and their endpoints exist before a
# listener or route that refers to them arrives.
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)

# Types whose removals wait for the rest of the push (make-before-break, Envoy's
# "eventual consistency considerations"): a cluster the new routes no longer use
# is first kept (with its endpoints, as last sent) and removed by a final
# response after LDS and RDS, so no route ever names a cluster declared absent.
MAKE_BEFORE_BREAK = frozenset({CLUSTER, ENDPOINT})

SHORT_NAMES = {LISTENER: "LDS", ROUTE: "RDS", CLUSTER: "CDS", ENDPOINT: "EDS"}


def short_type_name(type_url: str) -> str:
    """`LDS`/`RDS`/`CDS`/`EDS` for the four types, the message name otherwise."""
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])


@dataclass(frozen=True, slots=True)
class Subscription:
    """The names a client asked for. `wildcard` means every resource of the type."""

    wildcard: bool
    names: frozenset[str]

    def includes(self, name: str) -> bool:
        return self.wildcard or name in self.names


_NOTHING: Mapping[str, PackedResource] = {}
NOTHING_HELD: Mapping[str, PackedResource] = MappingProxyType({})
"""What a new Delta stream holds (one shared object: moves are memoized by identity)."""


@dataclass(slots=True)
class TypeState:
    """Protocol state for one type URL on one stream.

    Everything here is shared with other streams where it can be (the
    subscription and the last response are the very objects every stream of
    the same kind holds): at 10,000 clients, per-stream copies were most of
    the control plane's memory per client.
    """

    subscription: Subscription
    # The latest response sent for this type (shared): its fingerprint decides
    # whether a config change needs a push, its resources are the control
    # plane's record of what this client was sent (`/config_dump?node=`).
    sent: PreparedResponse | None = None
    acked_version: str = ""
    nacked_version: str | None = None
    nack_message: str | None = None

    @property
    def sent_version(self) -> str:
        return self.sent.version if self.sent is not None else ""

    @property
    def sent_nonce(self) -> str:
        return self.sent.nonce if self.sent is not None else ""

    @property
    def sent_resources(self) -> Mapping[str, PackedResource]:
        return self.sent.resources if self.sent is not None else _NOTHING

    def to_status(self) -> dict[str, Any]:
        sub = self.subscription
        return {
            "subscribed": ["*"] if sub.wildcard else sorted(sub.names),
            "sent": self.sent_version,
            "acked": self.acked_version,
            "nacked": self.nacked_version,
            "error": self.nack_message,
        }


@dataclass(slots=True)
class DeltaTypeState:
    """Protocol state for one type URL on one Delta (incremental) stream.

    `held` is what the client holds as far as the server knows: every
    resource it was sent (or said it had, when resuming) and not since
    removed. After a push it is the very mapping of the client's kind and
    subscription at that version, shared by every stream in the same place.
    """

    subscription: Subscription
    held: Mapping[str, PackedResource] = field(default_factory=lambda: NOTHING_HELD)
    sent_version: str = ""
    sent_nonce: str = ""
    acked_version: str = ""
    nacked_version: str | None = None
    nack_message: str | None = None

    @property
    def sent_resources(self) -> Mapping[str, PackedResource]:
        return self.held

    def to_status(self) -> dict[str, Any]:
        sub = self.subscription
        return {
            "subscribed": ["*", *sorted(sub.names)] if sub.wildcard else sorted(sub.names),
            "sent": self.sent_version,
            "acked": self.acked_version,
            "nacked": self.nacked_version,
            "error": self.nack_message,
        }


@dataclass(slots=True)
class ClientRecord:
    """One ADS stream: who the client is and where each type stands."""

    peer: str
    connected_at: float = field(default_factory=time.time)
    last_seen: float = 0.0  # wall time of the client's latest request (ACK, NACK, subscribe)
    node_id: str = ""
    kind: str = ""
    user_agent: str = ""
    namespace: str = ""  # node metadata NAMESPACE (Istio's key), "" if not sent
    service_account: str = ""  # node metadata SERVICE_ACCOUNT
    types: dict[str, TypeState] = field(default_factory=dict)  # State of the World
    delta_types: dict[str, DeltaTypeState] = field(default_factory=dict)  # Delta
    delta: bool = False  # the stream speaks Delta (incremental) xDS

    def type_states(self) -> list[tuple[str, TypeState | DeltaTypeState]]:
        """(type URL, state) of every type on the stream, whichever variant."""
        states: dict[str, TypeState | DeltaTypeState] = {**self.types, **self.delta_types}
        return sorted(states.items())

    def set_identity(self, node: Any) -> None:
        """Read who the workload says it is from its node metadata; shown by
        `meshctl status` (the SPIFFE ID it would be issued)."""
        fields = node.metadata.fields
        self.namespace = fields["NAMESPACE"].string_value if "NAMESPACE" in fields else ""
        sa = fields["SERVICE_ACCOUNT"].string_value if "SERVICE_ACCOUNT" in fields else ""
        self.service_account = sa

    def spiffe_id(self, trust_domain: str) -> str:
        """`spiffe://<td>/ns/<ns>/sa/<sa>`, or "" when the node did not say."""
        return spiffe_id(trust_domain, self.namespace, self.service_account)

    def to_status(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "kind": self.kind,
            "user_agent": self.user_agent,
            "peer": self.peer,
            "namespace": self.namespace,
            "service_account": self.service_account,
            "connected_at": self.connected_at,
            "last_seen": self.last_seen or self.connected_at,
            "protocol": "delta" if self.delta else "sotw",
            "types": {short_type_name(t): s.to_status() for t, s in self.type_states()},
        }

    def to_dump(self) -> dict[str, Any]:
        """What this stream was last sent, per type: versions, ACK/NACK and the
        resources as JSON (`/config_dump?node=`; made in the process serving it)."""
        return {
            "kind": self.kind,
            "peer": self.peer,
            "protocol": "delta" if self.delta else "sotw",
            "types": {
                short_type_name(type_url): {
                    **state.to_status(),
                    "resources": {
                        name: json_format.MessageToDict(
                            packed.message, preserving_proto_field_name=True
                        )
                        for name, packed in sorted(state.sent_resources.items())
                    },
                }
                for type_url, state in self.type_states()
            },
        }


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """The SPIFFE ID a node's metadata claims, or "" when it names none."""
    if not namespace or not service_account:
        return ""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
