"""xDS messages decoded from their bytes without the protobuf runtime or the
Envoy modules (issue 25: together ~8 MB of every meshed process).

`WireMessage` reads protobuf's wire format, tokenized by the native core's
`scan_fields`, against the field tables in `xds_schema.txt` (written from
the Envoy descriptors by tools/gen_xds_schema.py) and answers the part of
the generated classes' API the decoders use: attribute access with proto3
defaults, `HasField`, `WhichOneof`, repeated fields as lists, maps as dicts,
and Any as a message whose payload `unpack` decodes. It parses eagerly and
as protobuf does: unknown fields and fields of an unexpected wire type are
skipped, a repeated occurrence of a singular message merges into it, the
last scalar and the last oneof member win, strings must be UTF-8; malformed
bytes raise WireError where protobuf raises DecodeError. The differential
tests in tests/property hold it to the protobuf runtime.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import cache
from importlib import resources
from typing import Any

from proxyless_mesh import native_core

__all__ = [
    "MESSAGE",
    "WireError",
    "WireMessage",
    "encode",
    "enum_name",
    "message_type",
    "parse",
]

_VARINT, _I64, _LEN, _SGROUP, _I32 = 0, 1, 2, 3, 5
# protobuf's FieldDescriptor.TYPE_* numbers
_DOUBLE, _FLOAT, _INT64, _UINT64, _INT32, _FIXED64, _FIXED32, _BOOL = 1, 2, 3, 4, 5, 6, 7, 8
_STRING, _GROUP, _MESSAGE, _BYTES, _UINT32, _ENUM = 9, 10, 11, 12, 13, 14
_SFIXED32, _SFIXED64, _SINT32, _SINT64 = 15, 16, 17, 18
_WIRE_TYPE = {
    _DOUBLE: _I64,
    _FIXED64: _I64,
    _SFIXED64: _I64,
    _FLOAT: _I32,
    _FIXED32: _I32,
    _SFIXED32: _I32,
    _STRING: _LEN,
    _BYTES: _LEN,
    _MESSAGE: _LEN,
    _GROUP: _SGROUP,
}
MESSAGE = _MESSAGE
_DEFAULTS: dict[int, Any] = {_DOUBLE: 0.0, _FLOAT: 0.0, _BOOL: False, _STRING: "", _BYTES: b""}
_MAX_DEPTH = 100  # protobuf's default recursion limit


class WireError(ValueError):
    """Bytes protobuf would refuse to parse."""


@dataclass(frozen=True)
class Field:
    number: int
    name: str
    kind: int
    repeated: bool
    oneof: str
    presence: bool
    type_name: str
    wire_type: int = dataclass_field(init=False)  # the wire type it is written with
    packable: bool = dataclass_field(init=False)  # repeated scalars may come packed

    def __post_init__(self) -> None:
        object.__setattr__(self, "wire_type", _WIRE_TYPE.get(self.kind, _VARINT))
        scalar = self.kind not in (_STRING, _BYTES, _MESSAGE, _GROUP)
        object.__setattr__(self, "packable", self.repeated and scalar)


class MessageType:
    """One message's fields, by number and by name."""

    def __init__(self, name: str, is_map: bool, fields: list[Field]) -> None:
        self.name = name
        self.is_map = is_map
        self.by_number = {f.number: f for f in fields}
        self.by_name = {f.name: f for f in fields}


@cache
def _lines() -> dict[str, tuple[str, str]]:
    text = resources.files(__package__).joinpath("xds_schema.txt").read_text()
    out = {}
    for line in text.splitlines():
        name, kind, body = line.split("\t")
        out[name] = (kind, body)
    return out


@cache
def message_type(name: str) -> MessageType:
    """The field table of message `name` (full name); KeyError if unknown."""
    kind, body = _lines()[name]
    fields = []
    for spec in body.split(";") if body else ():
        number, fname, ftype, repeated, oneof, presence, type_name = spec.split(",")
        fields.append(
            Field(
                int(number),
                fname,
                int(ftype),
                repeated == "1",
                oneof,
                presence == "1",
                type_name,
            )
        )
    return MessageType(name, kind == "map", fields)


@cache
def _enum(name: str) -> dict[int, str]:
    _, body = _lines()[f"enum {name}"]
    return {int(n): v for n, _, v in (item.partition("=") for item in body.split(";"))}


def enum_name(enum: str, number: int) -> str:
    """The name of `number` in enum `enum` (full name), as protobuf's
    `Enum.Name`; ValueError for a number the enum does not define."""
    try:
        return _enum(enum)[number]
    except KeyError:
        raise ValueError(f"enum {enum} has no value {number}") from None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    end = len(data)
    while True:
        if pos >= end:
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


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _scalar(kind: int, raw: Any) -> Any:
    """A scalar field's value from its raw varint / fixed bytes / length-delimited bytes."""
    if kind in (_INT64, _SFIXED64):
        return _signed(raw, 64) if kind == _INT64 else struct.unpack("<q", raw)[0]
    if kind in (_INT32, _ENUM):
        return _signed(raw, 32)
    if kind == _UINT32:
        return raw & 0xFFFFFFFF
    if kind == _UINT64:
        return raw
    if kind == _BOOL:
        return raw != 0
    if kind == _SINT32:
        raw &= 0xFFFFFFFF
        return (raw >> 1) ^ -(raw & 1)
    if kind == _SINT64:
        return (raw >> 1) ^ -(raw & 1)
    if kind == _DOUBLE:
        return struct.unpack("<d", raw)[0]
    if kind == _FLOAT:
        return struct.unpack("<f", raw)[0]
    if kind == _FIXED64:
        return struct.unpack("<Q", raw)[0]
    if kind == _FIXED32:
        return struct.unpack("<I", raw)[0]
    if kind == _SFIXED32:
        return struct.unpack("<i", raw)[0]
    if kind == _STRING:
        try:
            return bytes(raw).decode()
        except UnicodeDecodeError:
            raise WireError("string field is not valid UTF-8") from None
    return bytes(raw)  # _BYTES


def _packed(kind: int, data: bytes) -> list[Any]:
    wire = _WIRE_TYPE.get(kind, _VARINT)
    out, pos = [], 0
    if wire == _VARINT:
        while pos < len(data):
            raw, pos = _varint(data, pos)
            out.append(_scalar(kind, raw))
        return out
    size = 8 if wire == _I64 else 4
    if len(data) % size:
        raise WireError("packed fixed-size field of a wrong length")
    return [_scalar(kind, data[i : i + size]) for i in range(0, len(data), size)]


#: The native core's tokenizer of one message level: (number, wire type,
#: value) per field in order, the value an int for a varint, the bytes
#: otherwise (a length-delimited field's content, a fixed field's 4 or 8
#: bytes); groups skipped; ValueError for malformed bytes.
_scan_fields = native_core.member("scan_fields")


def _scan(data: bytes) -> list[tuple[int, int, Any]]:
    try:
        return list(_scan_fields(data))
    except ValueError as exc:
        raise WireError(str(exc)) from None


class WireMessage:
    """One decoded message (see the module docstring)."""

    __slots__ = ("_case", "_raw", "_type", "_values")

    def __init__(self, mtype: MessageType, data: bytes, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            raise WireError("message nested too deep")
        self._type = mtype
        self._raw = data
        self._values: dict[str, Any] = {}
        self._case: dict[str, str] = {}  # oneof -> the member set last
        chunks: dict[str, list[bytes]] = {}  # singular messages: merged at the end
        by_number = mtype.by_number
        for number, wire, raw in _scan(data):
            spec = by_number.get(number)
            if spec is None:
                continue  # unknown, as protobuf keeps it
            packed = wire == _LEN and spec.packable
            if wire != spec.wire_type and not packed:
                continue  # an unexpected wire type: unknown too
            if spec.oneof and self._case.get(spec.oneof) != spec.name:
                previous = self._case.get(spec.oneof)
                if previous is not None:
                    self._values.pop(previous, None)
                    chunks.pop(previous, None)
                self._case[spec.oneof] = spec.name
            self._store(spec, raw, packed, chunks, depth)
        for name, parts in chunks.items():
            sub = message_type(mtype.by_name[name].type_name)
            self._values[name] = WireMessage(sub, b"".join(parts), depth + 1)

    def _store(
        self, field: Field, raw: Any, packed: bool, chunks: dict[str, list[bytes]], depth: int
    ) -> None:
        name = field.name
        if field.kind == _MESSAGE:
            sub = message_type(field.type_name)
            if not field.repeated:
                chunks.setdefault(name, []).append(raw)
            elif sub.is_map:
                entry = WireMessage(sub, raw, depth + 1)
                mapping = self._values.setdefault(name, {})
                mapping[entry.key] = entry.value
            else:
                self._values.setdefault(name, []).append(WireMessage(sub, raw, depth + 1))
        elif field.repeated:
            items = self._values.setdefault(name, [])
            items.extend(_packed(field.kind, raw) if packed else [_scalar(field.kind, raw)])
        else:
            self._values[name] = _scalar(field.kind, raw)

    # -- the generated classes' API ----------------------------------------------

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            pass
        try:
            field = self._type.by_name[name]
        except KeyError:
            raise AttributeError(f"{self._type.name} has no field {name!r}") from None
        if field.kind == _MESSAGE:
            sub = message_type(field.type_name)
            if not field.repeated:
                return WireMessage(sub, b"")
            return {} if sub.is_map else []
        if field.repeated:
            return []
        return _DEFAULTS.get(field.kind, 0)

    def HasField(self, name: str) -> bool:  # protobuf's name
        field = self._type.by_name.get(name)
        if field is None or field.repeated or not (field.presence or field.kind == _MESSAGE):
            raise ValueError(f"{self._type.name} has no presence field {name!r}")
        return name in self._values

    def WhichOneof(self, oneof: str) -> str | None:  # protobuf's name
        return self._case.get(oneof)

    def SerializeToString(self, **_: Any) -> bytes:  # protobuf's name
        """The bytes this was parsed from (equal content, possibly other bytes
        than protobuf would write: fine for the comparisons the decoders make)."""
        return self._raw

    def ListFields(self) -> list[tuple[Field, Any]]:  # protobuf's name
        """(field, value) of every set field, in field-number order."""
        by_name = self._type.by_name
        return sorted(((by_name[n], v) for n, v in self._values.items()), key=lambda p: p[0].number)

    def message_type_name(self) -> str:
        """This message's full type name (a method: a property could shadow a field)."""
        return self._type.name

    def __repr__(self) -> str:
        return f"WireMessage({self._type.name}, {self._values!r})"


def parse(type_name: str, data: bytes) -> WireMessage:
    """Decode `data` as message `type_name`; WireError for malformed bytes."""
    return WireMessage(message_type(type_name), data)


# -- encoding -----------------------------------------------------------------------


def _encode_varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # negatives: ten bytes, two's complement (int32 too)
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_value(field: Field, value: Any) -> bytes:
    kind = field.kind
    if kind == _MESSAGE:
        body = encode(field.type_name, value)
    elif kind in (_STRING, _BYTES):
        body = value.encode() if isinstance(value, str) else bytes(value)
    elif kind in (_SINT32, _SINT64):
        bits = 32 if kind == _SINT32 else 64
        return _encode_varint((value << 1) ^ (value >> (bits - 1)))
    elif kind in (_DOUBLE, _FLOAT, _FIXED64, _FIXED32, _SFIXED32, _SFIXED64):
        fmt = {_DOUBLE: "<d", _FLOAT: "<f", _FIXED64: "<Q", _FIXED32: "<I"}
        return struct.pack(fmt.get(kind, "<i" if kind == _SFIXED32 else "<q"), value)
    else:
        return _encode_varint(int(value))
    return _encode_varint(len(body)) + body


def encode(type_name: str, values: Any) -> bytes:
    """Message `type_name` from a mapping of field name -> value (messages as
    mappings, repeated fields as lists, maps as dicts), in field-number order
    as protobuf writes it; proto3 defaults of fields without presence are
    left out, as protobuf does."""
    mtype = message_type(type_name)
    out = bytearray()
    for field in sorted((mtype.by_name[n] for n in values), key=lambda f: f.number):
        value = values[field.name]
        key = _encode_varint(field.number << 3 | field.wire_type)
        if field.kind == _MESSAGE and message_type(field.type_name).is_map:
            for k, v in value.items():
                entry = encode(field.type_name, {"key": k, "value": v})
                out += key + _encode_varint(len(entry)) + entry
        elif field.repeated:
            for item in value:
                out += key + _encode_value(field, item)
        elif field.kind == _MESSAGE or field.presence or value != _DEFAULTS.get(field.kind, 0):
            out += key + _encode_value(field, value)
    return bytes(out)
