"""How the ADS protocol makes its requests and reads responses, without
protobuf (issue 25): requests are encoded from field mappings by `_wire`
(the node a mapping too, see `struct_fields`), responses decoded by `_wire`
over the native core's tokenizer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from proxyless_mesh.xds_client import _wire

__all__ = ["Encoded", "any_message", "parser", "request", "struct_fields"]

_ANY = "google.protobuf.Any"


class Encoded:
    """A request already in wire format (what the transports serialize)."""

    __slots__ = ("data", "fields")

    def __init__(self, data: bytes, fields: Mapping[str, Any]) -> None:
        self.data = data
        self.fields = fields  # as given: for logs and tests

    def SerializeToString(self) -> bytes:  # protobuf's name, as the transports call it
        return self.data


def request(type_name: str, fields: Mapping[str, Any]) -> Encoded:
    """Message `type_name` (a discovery request) from its field mapping."""
    return Encoded(_wire.encode(type_name, fields), fields)


def parser(type_name: str) -> Callable[[bytes], _wire.WireMessage]:
    """What the transports decode each received message with."""

    def parse(data: bytes) -> _wire.WireMessage:
        return _wire.parse(type_name, data)

    return parse


def any_message(type_url: str, value: bytes) -> _wire.WireMessage:
    """A google.protobuf.Any holding `value`, as a received one reads."""
    return _wire.parse(_ANY, _wire.encode(_ANY, {"type_url": type_url, "value": value}))


def struct_fields(value: Mapping[str, Any]) -> dict[str, Any]:
    """A google.protobuf.Struct as the mapping `_wire.encode` takes."""
    return {"fields": {str(k): _value(v) for k, v in value.items()}}


def _value(value: Any) -> dict[str, Any]:
    if value is None:
        return {"null_value": 0}
    if isinstance(value, bool):
        return {"bool_value": value}
    if isinstance(value, int | float):
        return {"number_value": float(value)}
    if isinstance(value, str):
        return {"string_value": value}
    if isinstance(value, Mapping) or hasattr(value, "items"):
        return {"struct_value": struct_fields(dict(value.items()))}
    if isinstance(value, list | tuple):
        return {"list_value": {"values": [_value(v) for v in value]}}
    raise TypeError(f"cannot put a {type(value).__name__} into a Struct")
