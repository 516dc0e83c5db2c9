"""Differential test of the native core (issue 25): the Rust decoder of
ClusterLoadAssignment bytes and the Python protobuf runtime (read into the
same view by tests/oracles/endpoints.py) must give the same view on the same
generated messages, including unknown fields, merged
(concatenated) messages and truncated bytes; and the model built from either
is the same, or both are refused with the same message."""

from __future__ import annotations

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st
from oracles.endpoints import protobuf_view, view_from_message

from proxyless_mesh.errors import XdsResourceError
from proxyless_mesh.xds_client import _decode_endpoints as endpoints
from proxyless_mesh.xds_client._decode import decode_cluster_load_assignment
from proxyless_mesh.xds_client._types import ResourceType

native = endpoints.native_decode

U32 = st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1))
TEXT = st.one_of(st.sampled_from(["", "a", "10.0.0.1", "zone-ä"]), st.text(max_size=8))


@st.composite
def lb_endpoints(draw: st.DrawFn, lle: endpoint_pb2.LocalityLbEndpoints) -> None:
    ep = lle.lb_endpoints.add()
    host = draw(st.sampled_from(["endpoint", "endpoint", "endpoint_name", None]))
    if host == "endpoint_name":
        ep.endpoint_name = draw(TEXT)
    elif host == "endpoint":
        address = ep.endpoint.address
        kind = draw(st.sampled_from(["socket", "socket", "pipe", "internal", None]))
        if kind == "socket":
            sa = address.socket_address
            sa.address = draw(TEXT)
            port = draw(st.sampled_from(["value", "value", "named", None]))
            if port == "value":
                sa.port_value = draw(st.one_of(st.integers(0, 65536), U32))
            elif port == "named":
                sa.named_port = draw(TEXT)
            if draw(st.booleans()):
                ep.endpoint.hostname = draw(TEXT)
        elif kind == "pipe":
            address.pipe.path = draw(TEXT)
        elif kind == "internal":
            address.envoy_internal_address.server_listener_name = draw(TEXT)
    if draw(st.booleans()):
        ep.load_balancing_weight.value = draw(U32)
    ep.health_status = draw(st.one_of(st.integers(0, 6), st.integers(-(2**31), 2**31 - 1)))
    draw(metadata(ep))


@st.composite
def metadata(draw: st.DrawFn, ep: endpoint_pb2.LbEndpoint) -> None:
    """Istio's telemetry metadata (filter_metadata "istio", field "workload"),
    sometimes of another kind or under other keys."""
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(["istio", "istio", "other", ""]))
        fields = ep.metadata.filter_metadata[key].fields
        for _ in range(draw(st.integers(0, 2))):
            name = draw(st.sampled_from(["workload", "workload", "name"]))
            kind = draw(st.sampled_from(["string", "string", "number", "bool", "struct", "null"]))
            if kind == "string":
                fields[name].string_value = draw(TEXT)
            elif kind == "number":
                fields[name].number_value = 1.5
            elif kind == "bool":
                fields[name].bool_value = True
            elif kind == "struct":
                fields[name].struct_value.fields["x"].string_value = draw(TEXT)
            else:
                fields[name].null_value = 0


@st.composite
def assignments(draw: st.DrawFn) -> endpoint_pb2.ClusterLoadAssignment:
    msg = endpoint_pb2.ClusterLoadAssignment(cluster_name=draw(TEXT))
    for _ in range(draw(st.integers(0, 3))):
        lle = msg.endpoints.add()
        lle.locality.region, lle.locality.zone = draw(TEXT), draw(TEXT)
        lle.locality.sub_zone = draw(TEXT)
        if draw(st.booleans()):
            lle.load_balancing_weight.value = draw(U32)
        lle.priority = draw(st.one_of(st.integers(0, 2), U32))
        for _ in range(draw(st.integers(0, 3))):
            draw(lb_endpoints(lle))
    if draw(st.booleans()):
        msg.policy.overprovisioning_factor.value = draw(U32)
    return msg


def _refused_alike_or_read_alike(data: bytes) -> None:
    """Bytes the protobuf runtime refuses the native core refuses too; bytes it
    reads, the native core reads into the same view."""
    try:
        expected = protobuf_view(data)
    except DecodeError:
        with pytest.raises(ValueError):
            native(data)
        return
    assert native(data) == expected


def _built(view: endpoints.AssignmentView) -> object:
    try:
        return endpoints.assignment_from_view(view)
    except XdsResourceError as exc:
        return ("refused", str(exc))


# An unknown field of each wire type (numbers the message does not use),
# groups (proto2, nested) included: the protobuf runtime skips them all.
UNKNOWN = st.sampled_from(
    [
        b"",
        b"\xb8\x3e\x05",
        b"\xc2\x3e\x02hi",
        b"\xc9\x3e" + bytes(8),
        b"\xcd\x3e" + bytes(4),
        b"\xc3\x3e\x08\x01\xc4\x3e",
        b"\xc3\x3e\xcb\x3e\x08\x01\xcc\x3e\xc4\x3e",
    ]
)


@given(assignments(), UNKNOWN)
def test_native_and_protobuf_views_agree(
    msg: endpoint_pb2.ClusterLoadAssignment, extra: bytes
) -> None:
    data = msg.SerializeToString() + extra
    view = native(data)
    assert view == protobuf_view(data)
    assert _built(view) == _built(protobuf_view(data))


@given(assignments(), assignments())
def test_concatenated_messages_merge_alike(
    first: endpoint_pb2.ClusterLoadAssignment, second: endpoint_pb2.ClusterLoadAssignment
) -> None:
    data = first.SerializeToString() + second.SerializeToString()
    assert native(data) == protobuf_view(data)


@given(assignments(), st.data())
def test_truncated_bytes_fail_or_agree(
    msg: endpoint_pb2.ClusterLoadAssignment, data: st.DataObject
) -> None:
    whole = msg.SerializeToString()
    cut = whole[: data.draw(st.integers(0, len(whole)))]
    _refused_alike_or_read_alike(cut)


@given(assignments())
def test_decoding_an_any_gives_the_protobuf_model(msg: endpoint_pb2.ClusterLoadAssignment) -> None:
    packed = any_pb2.Any(type_url=ResourceType.CLUSTER_LOAD_ASSIGNMENT.type_url)
    packed.value = msg.SerializeToString()
    try:
        got: object = decode_cluster_load_assignment(packed)
    except XdsResourceError as exc:
        got = ("refused", str(exc))
    assert got == _built(view_from_message(msg))


@given(st.binary(max_size=64), st.binary(max_size=16))
def test_arbitrary_bytes_are_refused_alike_or_read_alike(head: bytes, tail: bytes) -> None:
    data = head + endpoint_pb2.ClusterLoadAssignment(cluster_name="c").SerializeToString() + tail
    _refused_alike_or_read_alike(data)


@given(assignments(), st.data())
def test_corrupted_messages_are_refused_alike_or_read_alike(
    msg: endpoint_pb2.ClusterLoadAssignment, data: st.DataObject
) -> None:
    raw = bytearray(msg.SerializeToString())
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=2))
        if raw and data.draw(st.booleans()):
            del raw[data.draw(st.integers(0, len(raw) - 1))]
    corrupted = bytes(raw)
    _refused_alike_or_read_alike(corrupted)
