"""The reference the native core is held to; not shipped.

`scan_fields` tokenizes one level of a protobuf message in plain Python, as
the library did before the native core became mandatory (issue 25):
tests/property/test_wire_decode_props.py demands the native
`proxyless_mesh_native.scan_fields` give the same tokens and refuse the
same bytes. Written from the protobuf wire-format spec: varints of at most
ten bytes and 64 bits, field number 0 refused, wire types 6 and 7 refused,
groups (proto2) skipped with their nesting checked."""

from __future__ import annotations

from typing import Any

__all__ = ["WireError", "scan_fields"]

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
MAX_DEPTH = 100  # protobuf's default recursion limit


class WireError(ValueError):
    """Bytes protobuf would refuse to parse."""


def scan_fields(data: bytes) -> list[tuple[int, int, Any]]:
    """One message level's fields in order: (number, wire type, value), the
    value an int for a varint, the bytes otherwise (a length-delimited
    field's content, a fixed field's 4 or 8 bytes); groups are skipped.
    WireError for malformed bytes."""
    out: list[tuple[int, int, Any]] = []
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        start = pos
        pos = _skip(data, pos, key, 0)
        if wire == VARINT:
            out.append((number, wire, _varint(data, start)[0]))
        elif wire == LEN:
            length, body = _varint(data, start)
            out.append((number, wire, data[body : body + length]))
        elif wire != SGROUP:
            out.append((number, wire, data[start:pos]))
    return out


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if shift >= 63 and value >> 64:
                raise WireError("varint over 64 bits")
            return value & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift > 63:
            raise WireError("varint over ten bytes")


def _skip(data: bytes, pos: int, key: int, depth: int) -> int:
    wire = key & 7
    if wire == VARINT:
        return _varint(data, pos)[1]
    if wire in (I64, I32):
        pos += 8 if wire == I64 else 4
    elif wire == LEN:
        length, pos = _varint(data, pos)
        pos += length
    elif wire == SGROUP:
        return _skip_group(data, pos, key >> 3, depth)
    else:
        raise WireError(f"invalid wire type {wire}")
    if pos > len(data):
        raise WireError("truncated field")
    return pos


def _skip_group(data: bytes, pos: int, number: int, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise WireError("groups nested too deep")
    while True:
        key, pos = _varint(data, pos)
        if key & 7 == EGROUP:
            if key >> 3 != number:
                raise WireError("mismatched end of group")
            return pos
        pos = _skip(data, pos, key, depth + 1)
