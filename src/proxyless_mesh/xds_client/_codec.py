"""How the ADS protocol makes its requests and reads responses: with protobuf's
generated classes, or without protobuf at all (issue 25: `_wire`, the
default when the native core is available). The protocol hands both the same
field mappings; what comes back answers the same attribute API."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from proxyless_mesh.xds_client import _decode_endpoints as endpoints
from proxyless_mesh.xds_client import _wire
from proxyless_mesh.xds_client._message import pb2_class

__all__ = ["Codec", "Encoded", "ProtobufCodec", "WireCodec", "default_codec", "struct_fields"]

_ANY = "google.protobuf.Any"


class Encoded:
    """A request already in wire format (what the transports serialize)."""

    __slots__ = ("data", "fields")

    def __init__(self, data: bytes, fields: Mapping[str, Any]) -> None:
        self.data = data
        self.fields = fields  # as given: for logs and tests

    def SerializeToString(self) -> bytes:  # protobuf's name, as the transports call it
        return self.data


class Codec(Protocol):
    def request(self, type_name: str, fields: Mapping[str, Any]) -> Any: ...
    def parser(self, type_name: str) -> Callable[[bytes], Any]: ...
    def any(self, type_url: str, value: bytes) -> Any: ...


class ProtobufCodec:
    """Generated classes: requests are protobuf messages, responses too."""

    def request(self, type_name: str, fields: Mapping[str, Any]) -> Any:
        values = dict(fields)
        if isinstance(values.get("error_detail"), Mapping):
            from google.rpc import status_pb2

            values["error_detail"] = status_pb2.Status(**values["error_detail"])
        return pb2_class(type_name)(**values)

    def parser(self, type_name: str) -> Callable[[bytes], Any]:
        parse: Callable[[bytes], Any] = pb2_class(type_name).FromString
        return parse

    def any(self, type_url: str, value: bytes) -> Any:
        from google.protobuf import any_pb2

        return any_pb2.Any(type_url=type_url, value=value)


class WireCodec:
    """No protobuf: requests encoded from the mappings (the node a mapping too,
    see `struct_fields`), responses decoded by `_wire`."""

    def request(self, type_name: str, fields: Mapping[str, Any]) -> Any:
        return Encoded(_wire.encode(type_name, fields), fields)

    def parser(self, type_name: str) -> Callable[[bytes], Any]:
        def parse(data: bytes) -> Any:
            return _wire.parse(type_name, data)

        return parse

    def any(self, type_url: str, value: bytes) -> Any:
        return _wire.parse(_ANY, _wire.encode(_ANY, {"type_url": type_url, "value": value}))


def default_codec() -> Codec:
    """Without protobuf when the native core is available (it decodes EDS; the
    rest goes through `_wire`), else the protobuf runtime (the fallback)."""
    return WireCodec() if endpoints.native_decode is not None else ProtobufCodec()


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
