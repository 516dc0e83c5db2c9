"""The library's xDS decoders on what the control plane sends (issue 25: they
read `_wire` messages only, decoded by the native core's tokenizer).
Resources are what the control plane translates from generated Istio configs
(routing, and one workload's policies: ext_authz CUSTOM, RBAC, jwt_authn with
spaceDelimitedClaims, the Sidecar's outbound mode), for every client kind,
sometimes with random fields set on top (most of which the decoders must
refuse). The protobuf runtime is the oracle: the `_wire` message reads as
protobuf's does, field by field and inside every Any the decoders unpack, so
the decoders (pure functions of what they read) see what protobuf would give
them; the public decoders, given protobuf's message or its Any, give the
same result as from the wire; and a refusal is an XdsResourceError (a NACK),
never another exception."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from istio_configs import mesh_documents
from istio_policy_configs import LABELS, NAMESPACE, SERVICE_ACCOUNT, policy_documents
from mesh_control_plane.config import parse_documents
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE, ClientKind, NodeInfo
from mesh_control_plane.translate import translate as translate_config

from proxyless_mesh.xds_client._codec import any_message
from proxyless_mesh.xds_client._decode import decode_resource, unpack_resource
from proxyless_mesh.xds_client._types import ResourceType
from proxyless_mesh.xds_client._wire import parse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_wire_decode_props import assert_same, fill

TYPES = {
    LISTENER: ResourceType.LISTENER,
    ROUTE: ResourceType.ROUTE_CONFIGURATION,
    CLUSTER: ResourceType.CLUSTER,
    ENDPOINT: ResourceType.CLUSTER_LOAD_ASSIGNMENT,
}


def outcome(rtype: ResourceType, packed: Any) -> tuple[str, Any]:
    """("ok", model) or (exception type, message): what decoding gives."""
    try:
        return "ok", decode_resource(rtype, unpack_resource(rtype, packed))
    except Exception as exc:  # any difference counts, bugs included
        return type(exc).__name__, str(exc)


def features(model: Any) -> list[str]:
    """The policy features a decoded listener carries (so the statistics
    show the generators reach them)."""
    found = []
    if any(engine.ext_authz is not None for engine in getattr(model, "rbac", ())):
        found.append("ext_authz CUSTOM")
    jwt = getattr(model, "jwt", None)
    if jwt is not None and any(p.space_delimited_claims for p in jwt.providers):
        found.append("jwt spaceDelimitedClaims")
    if getattr(model, "outbound_policy", None):
        found.append(f"outbound policy {model.outbound_policy}")
    return found


@st.composite
def resources(draw: st.DrawFn) -> tuple[ResourceType, Message]:
    kind = draw(st.sampled_from(list(ClientKind)))
    policies = draw(st.booleans())
    if policies:
        docs = draw(policy_documents())
        labels = tuple(LABELS.items())
        node = NodeInfo(
            "httpbin", kind, labels=labels, namespace=NAMESPACE, service_account=SERVICE_ACCOUNT
        )
    else:
        docs = draw(mesh_documents())
        node = NodeInfo(id="n", kind=kind)
    config = parse_documents(("gen.yaml", d) for d in docs)
    rs = translate_config(config, build_static_registry(config), node)
    candidates = [
        (TYPES[url], msg)
        for url, by_name in rs.resources.items()
        for msg in by_name.values()
        if not policies or url == LISTENER  # the policies are in the listeners
    ]
    rtype, original = draw(st.sampled_from(candidates))
    msg = type(original)()
    msg.CopyFrom(original)
    if draw(st.booleans()):
        fill(draw, msg, 1)  # random extra fields, two levels deep
    return rtype, msg


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None)
@given(case=resources())
def test_decoders_read_what_protobuf_reads_and_refuse_only_by_nack(
    case: tuple[ResourceType, Message],
) -> None:
    rtype, msg = case
    data = msg.SerializeToString()
    assert_same(parse(msg.DESCRIPTOR.full_name, data), msg, into_any=True)
    from_wire = outcome(rtype, any_message(rtype.type_url, data))
    assert outcome(rtype, msg) == from_wire
    assert outcome(rtype, any_pb2.Any(type_url=rtype.type_url, value=data)) == from_wire
    event(f"{rtype.short_name}: {from_wire[0]}")
    for feature in features(from_wire[1]):
        event(feature)
    assert from_wire[0] in ("ok", "XdsResourceError"), from_wire
