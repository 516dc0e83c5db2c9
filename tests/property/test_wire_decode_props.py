"""Differential test of the protobuf-free xDS decoding (issue 25,
xds_client/_wire.py) against the protobuf runtime: on messages of every xDS
type the client decodes, generated field by field from the Envoy
descriptors (every field kind, oneofs, maps, unknown enum values, nested
messages), then serialized, sometimes concatenated (protobuf merges) or
truncated, both must give the same fields, or both refuse the bytes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor as F
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles import wire as oracle_wire

from proxyless_mesh import native_core
from proxyless_mesh.xds_client import _wire
from proxyless_mesh.xds_client._wire import WireError, WireMessage, parse

ROOTS = (
    listener_pb2.Listener,
    route_pb2.RouteConfiguration,
    cluster_pb2.Cluster,
    hcm_pb2.HttpConnectionManager,
    tls_pb2.UpstreamTlsContext,
    ext_authz_pb2.ExtAuthz,
    rbac_pb2.RBAC,
    jwt_pb2.JwtAuthentication,
    discovery_pb2.DiscoveryResponse,
    discovery_pb2.DeltaDiscoveryResponse,
)
INTS = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
    F.TYPE_ENUM: (-(2**31), 2**31 - 1),
}


def _scalar(draw: st.DrawFn, field: Any) -> Any:
    kind = field.type
    if kind in INTS:
        low, high = INTS[kind]
        small = st.integers(max(low, -3), min(high, 3))
        if kind == F.TYPE_ENUM:
            small = st.sampled_from([v.number for v in field.enum_type.values])
        return draw(st.one_of(small, small, st.integers(low, high)))
    if kind == F.TYPE_BOOL:
        return draw(st.booleans())
    if kind == F.TYPE_STRING:
        return draw(st.one_of(st.sampled_from(["", "a", "ü"]), st.text(max_size=6)))
    if kind == F.TYPE_BYTES:
        return draw(st.binary(max_size=6))
    if kind == F.TYPE_FLOAT:
        return draw(st.floats(width=32, allow_nan=False))
    return draw(st.floats(allow_nan=False))  # double


def fill(draw: st.DrawFn, msg: Message, depth: int) -> None:
    """Set a random subset of `msg`'s fields (recursing `depth` levels)."""
    fields = list(msg.DESCRIPTOR.fields)
    if not fields:
        return
    for field in draw(st.lists(st.sampled_from(fields), max_size=4 if depth else 6)):
        is_message = field.type == F.TYPE_MESSAGE
        if is_message and depth >= 3:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            target = getattr(msg, field.name)
            for _ in range(draw(st.integers(1, 2))):
                key = _scalar(draw, key_field)
                if value_field.type == F.TYPE_MESSAGE:
                    fill(draw, target[key], depth + 1)
                else:
                    target[key] = _scalar(draw, value_field)
        elif field.is_repeated:
            target = getattr(msg, field.name)
            for _ in range(draw(st.integers(1, 2))):
                if is_message:
                    fill(draw, target.add(), depth + 1)
                else:
                    target.append(_scalar(draw, field))
        elif is_message:
            sub = getattr(msg, field.name)
            sub.SetInParent()
            fill(draw, sub, depth + 1)
        else:
            setattr(msg, field.name, _scalar(draw, field))


@st.composite
def messages(draw: st.DrawFn) -> tuple[type[Message], bytes]:
    cls = draw(st.sampled_from(ROOTS))
    parts = []
    for _ in range(draw(st.sampled_from([1, 1, 1, 2]))):
        msg = cls()
        fill(draw, msg, 0)
        parts.append(msg.SerializeToString())
    data = b"".join(parts)
    if draw(st.integers(0, 5)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return cls, data


def assert_same(
    view: WireMessage, msg: Message, where: str = "", *, into_any: bool = False
) -> None:
    """`view` reads as protobuf's `msg` does, field by field; with
    `into_any`, inside the payload of every Any of a type the client decodes
    too (the decoders unpack those)."""
    for oneof in msg.DESCRIPTOR.oneofs:
        assert view.WhichOneof(oneof.name) == msg.WhichOneof(oneof.name), where + oneof.name
    for field in msg.DESCRIPTOR.fields:
        at = f"{where}{field.name}"
        expected, actual = getattr(msg, field.name), getattr(view, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            assert sorted(actual) == sorted(expected), at
            for key in expected:
                if isinstance(expected[key], Message):
                    assert_same(actual[key], expected[key], f"{at}[{key!r}].", into_any=into_any)
                else:
                    assert actual[key] == expected[key], at
        elif field.is_repeated:
            assert len(actual) == len(expected), at
            for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
                if isinstance(e, Message):
                    assert_same(a, e, f"{at}[{i}].", into_any=into_any)
                else:
                    assert _equal(a, e), at
        elif field.type == F.TYPE_MESSAGE:
            assert view.HasField(field.name) == msg.HasField(field.name), at
            if msg.HasField(field.name):  # (unset: both defaults; types may recurse)
                assert_same(actual, expected, at + ".", into_any=into_any)
        else:
            if field.has_presence:
                assert view.HasField(field.name) == msg.HasField(field.name), at
            assert _equal(actual, expected), at
    if into_any and msg.DESCRIPTOR.full_name == "google.protobuf.Any":
        _assert_same_payload(msg, where)


def _assert_same_payload(packed: Message, where: str) -> None:
    """The payload of the Any `packed`, decoded by both (or refused by both)."""
    name = packed.type_url.rsplit("/", 1)[-1]
    try:
        _wire.message_type(name)
    except KeyError:
        return  # a type the client never unpacks: the decoders refuse it by its type_url
    cls = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(name))
    value = packed.value
    try:
        expected = cls.FromString(value)
    except DecodeError:
        with pytest.raises(WireError):
            parse(name, value)
        return
    assert_same(parse(name, value), expected, f"{where}<{name}>.", into_any=True)


def _equal(a: Any, e: Any) -> bool:
    if isinstance(e, float):
        return (math.isnan(a) and math.isnan(e)) or a == e
    return type(a) is type(e) and a == e


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(case=messages())
def test_wire_decoding_matches_protobuf(case: tuple[type[Message], bytes]) -> None:
    cls, data = case
    try:
        expected = cls.FromString(data)
    except DecodeError:
        with pytest.raises(WireError):
            parse(cls.DESCRIPTOR.full_name, data)
        return
    assert_same(parse(cls.DESCRIPTOR.full_name, data), expected)


def test_a_field_number_over_2_29_is_kept_as_unknown_as_protobuf_does() -> None:
    data = b"\xf8\xff\xff\xff\x0f\x01\x0a\x01x"  # field 2^29 = 1, then name = "x"
    assert listener_pb2.Listener.FromString(data).name == "x"
    assert parse("envoy.config.listener.v3.Listener", data).name == "x"


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05abc",  # truncated string
        b"\x0a\x02\xff\xfe",  # not UTF-8
        b"\x08" + b"\xff" * 10 + b"\x01",  # varint over ten bytes
        b"\x00\x01",  # field number 0
        b"\x0f",  # wire type 7
    ],
)
def test_malformed_bytes_are_refused_by_both(data: bytes) -> None:
    with pytest.raises(DecodeError):
        listener_pb2.Listener.FromString(data)
    with pytest.raises(WireError):
        parse("envoy.config.listener.v3.Listener", data)


NATIVE_SCAN = native_core.member("scan_fields")


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    data=st.one_of(
        messages().map(lambda case: case[1]),
        st.binary(max_size=40),
        st.lists(st.sampled_from([b"\x0b", b"\x0c", b"\x13\x08\x01\x14", b"\x08\x80"])).map(
            b"".join
        ),  # groups, nested and not
    )
)
def test_native_field_scan_matches_the_reference(data: bytes) -> None:
    """The native tokenizer against tests/oracles/wire.py (the parse tests
    above reach it only through whole messages)."""
    try:
        expected = oracle_wire.scan_fields(data)
    except oracle_wire.WireError:
        with pytest.raises(ValueError):
            NATIVE_SCAN(data)
        return
    assert list(NATIVE_SCAN(data)) == expected
