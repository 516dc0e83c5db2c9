"""NodeInfo: recognising the client kind and Envoy's outbound port from the node."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from mesh_control_plane.translate import ClientKind, NodeInfo


def node(user_agent: str, **metadata: object) -> base_pb2.Node:
    proto = base_pb2.Node(id="node-1", user_agent_name=user_agent)
    proto.locality.region, proto.locality.zone, proto.locality.sub_zone = "eu", "z1", "r7"
    if metadata:
        proto.metadata.update(metadata)
    return proto


@pytest.mark.parametrize(
    ("user_agent", "kind"),
    [
        ("gRPC C-core linux Python", ClientKind.GRPC),
        ("gRPC Go", ClientKind.GRPC),
        ("proxyless-mesh", ClientKind.MESH),
        ("envoy", ClientKind.ENVOY),
        ("", ClientKind.GRPC),  # unknown: the shape every proxyless client accepts
    ],
)
def test_kind_from_user_agent(user_agent: str, kind: ClientKind) -> None:
    info = NodeInfo.from_proto(node(user_agent))
    assert info == NodeInfo(id="node-1", kind=kind, locality=("eu", "z1", "r7"))


@pytest.mark.parametrize("value", ["16001", 16001, 16001.0])
def test_envoy_outbound_port_from_metadata_string_or_number(value: object) -> None:
    assert NodeInfo.from_proto(node("envoy", OUTBOUND_PORT=value)).outbound_port == 16001


def test_outbound_port_is_ignored_for_proxyless_clients() -> None:
    info = NodeInfo.from_proto(node("proxyless-mesh", OUTBOUND_PORT="16001"))
    assert info.outbound_port == 15001


@pytest.mark.parametrize("value", ["abc", "-1", 70000, 1.5, True, ""])
def test_bad_outbound_port_is_refused_with_the_node_named(value: object) -> None:
    with pytest.raises(ValueError, match=r"node 'node-1': metadata OUTBOUND_PORT"):
        NodeInfo.from_proto(node("envoy", OUTBOUND_PORT=value))


def test_cache_key_covers_only_what_translate_reads() -> None:
    grpc_a = NodeInfo(id="a", kind=ClientKind.GRPC, locality=("x", "", ""))
    grpc_b = NodeInfo(id="b", kind=ClientKind.GRPC, outbound_port=1, locality=("x", "", ""))
    assert grpc_a.cache_key == grpc_b.cache_key
    # Locality and labels decide EDS priorities (localityLbSetting): part of the key.
    assert grpc_a.cache_key != NodeInfo(id="a", kind=ClientKind.GRPC).cache_key
    labelled = NodeInfo(id="a", kind=ClientKind.GRPC, locality=("x", "", ""), labels=(("k", "v"),))
    assert grpc_a.cache_key != labelled.cache_key
    assert grpc_a.cache_key != NodeInfo(id="a", kind=ClientKind.MESH).cache_key
    envoy = NodeInfo(id="e", kind=ClientKind.ENVOY)
    assert envoy.cache_key != NodeInfo(id="e", kind=ClientKind.ENVOY, outbound_port=1).cache_key


def test_labels_come_from_istio_labels_metadata() -> None:
    proto = base_pb2.Node(id="n", user_agent_name="gRPC C-core")
    proto.metadata.fields["LABELS"].struct_value.fields["app"].string_value = "web"
    proto.metadata.fields["LABELS"].struct_value.fields["n"].number_value = 1
    assert NodeInfo.from_proto(proto).labels == (("app", "web"),)


def test_nodes_differing_only_in_id_are_read_once_and_keep_their_ids() -> None:
    first = NodeInfo.from_proto(node("proxyless-mesh", NAMESPACE="shop", LABELS={"app": "web"}))
    other = node("proxyless-mesh", NAMESPACE="shop", LABELS={"app": "web"})
    other.id = "node-2"
    second = NodeInfo.from_proto(other)
    assert second.id == "node-2" and first.id == "node-1"
    assert second == NodeInfo._read(other)  # the same reading as from scratch
    assert second.cache_key == first.cache_key


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: p.metadata.update({"NAMESPACE": "other"}), "namespace"),
        (lambda p: setattr(p.locality, "zone", "z2"), "locality"),
        (lambda p: setattr(p, "id", "router~10.0.0.1~gw~default.svc"), "router"),
        (lambda p: setattr(p, "id", "sidecar~10.0.0.1~web~default.svc"), "sidecar"),
    ],
)
def test_what_the_reading_depends_on_is_not_shared(change: object, field: str) -> None:
    """Every field `_read` takes from the node but the id makes a node read anew."""
    base = node("envoy", NAMESPACE="shop")
    NodeInfo.from_proto(base)
    changed = node("envoy", NAMESPACE="shop")
    change(changed)  # type: ignore[operator]
    info = NodeInfo.from_proto(changed)
    assert info == NodeInfo._read(changed)
    assert getattr(info, field) != getattr(NodeInfo._read(base), field)


def test_a_node_that_fails_to_read_is_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises(ValueError, match="OUTBOUND_PORT"):
            NodeInfo.from_proto(node("envoy", OUTBOUND_PORT="nope"))
