"""What the decoders need from a message beyond its fields: unpacking an
Any, an enum's name, field presence, a Struct as Python values. The
messages are `_wire.WireMessage`s (issue 25: no protobuf in the process),
so the decoders import no generated module."""

from __future__ import annotations

import math
from typing import Any

from proxyless_mesh.errors import XdsResourceError
from proxyless_mesh.xds_client import _wire

__all__ = [
    "enum_name",
    "is_set",
    "struct_to_python",
    "type_name",
    "unpack_any",
]


def unpack_any(packed: Any, type_name: str, what: str) -> Any:
    """The `type_name` message inside the Any `packed`; XdsResourceError if
    it holds another type or does not parse."""
    if packed.type_url.rsplit("/", 1)[-1] != type_name:
        raise XdsResourceError(f"cannot unpack {packed.type_url!r} as {what}")
    try:
        return _wire.parse(type_name, packed.value)
    except _wire.WireError as exc:
        raise XdsResourceError(f"cannot parse {what}: {exc}") from None


def enum_name(enum: str, number: int) -> str:
    """The name of value `number` of enum `enum` (its full name), or the
    number itself for a value the enum does not define (proto3 enums are
    open: such a value reaches the decoders, which refuse it by this name)."""
    try:
        return _wire.enum_name(enum, number)
    except ValueError:
        return str(number)


def is_set(msg: Any, field: str) -> bool:
    """Whether `field` of `msg` holds anything: present for a message field,
    non-empty or non-zero otherwise."""
    spec = _wire.message_type(type_name(msg)).by_name[field]
    if spec.kind == _wire.MESSAGE and not spec.repeated:
        return bool(msg.HasField(field))
    return bool(getattr(msg, field))


def type_name(msg: _wire.WireMessage) -> str:
    """The full type name of a message."""
    return msg.message_type_name()


def struct_to_python(struct: Any) -> dict[str, Any]:
    """A google.protobuf.Struct as protobuf's json_format.MessageToDict gives
    it (numbers as floats; ValueError for NaN or infinity)."""
    return {key: _value(v) for key, v in struct.fields.items()}


def _value(value: Any) -> Any:
    which = value.WhichOneof("kind")
    if which is None or which == "null_value":
        return None
    if which == "number_value":
        number = float(value.number_value)
        if math.isinf(number) or math.isnan(number):
            raise ValueError("a Struct number is not finite")
        return number
    if which == "struct_value":
        return struct_to_python(value.struct_value)
    if which == "list_value":
        return [_value(v) for v in value.list_value.values]
    return getattr(value, which)  # string_value, bool_value
