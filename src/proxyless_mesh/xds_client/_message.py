"""What the decoders need from a message, whichever decoded it: protobuf's
generated classes (the grpcio path, or the native core not built) or
`_wire.WireMessage` (issue 25: no protobuf in the process). Both answer the
same attribute API; the few operations that differ (unpacking an Any, an
enum's name, a Struct as Python values) are here, so the decoders import no
generated module."""

from __future__ import annotations

import importlib
import math
from typing import Any

from proxyless_mesh.errors import XdsResourceError
from proxyless_mesh.xds_client import _wire

__all__ = [
    "PB2_MODULES",
    "enum_name",
    "is_set",
    "pb2_class",
    "struct_to_python",
    "type_name",
    "unpack_any",
]

#: The messages an Any may carry to the decoders, and their generated modules
#: (for the protobuf path; tools/gen_xds_schema.py starts its tables here too).
PB2_MODULES = {
    "envoy.service.discovery.v3.DiscoveryResponse": "envoy.service.discovery.v3.discovery_pb2",
    "envoy.service.discovery.v3.DeltaDiscoveryResponse": "envoy.service.discovery.v3.discovery_pb2",
    "envoy.service.discovery.v3.DiscoveryRequest": "envoy.service.discovery.v3.discovery_pb2",
    "envoy.service.discovery.v3.DeltaDiscoveryRequest": "envoy.service.discovery.v3.discovery_pb2",
    "envoy.service.discovery.v3.Resource": "envoy.service.discovery.v3.discovery_pb2",
    "envoy.config.listener.v3.Listener": "envoy.config.listener.v3.listener_pb2",
    "envoy.config.route.v3.RouteConfiguration": "envoy.config.route.v3.route_pb2",
    "envoy.config.route.v3.FilterConfig": "envoy.config.route.v3.route_components_pb2",
    "envoy.config.route.v3.CorsPolicy": "envoy.config.route.v3.route_components_pb2",
    "envoy.config.cluster.v3.Cluster": "envoy.config.cluster.v3.cluster_pb2",
    "envoy.config.endpoint.v3.ClusterLoadAssignment": "envoy.config.endpoint.v3.endpoint_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": (
        "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2"
    ),
    "envoy.extensions.filters.http.router.v3.Router": (
        "envoy.extensions.filters.http.router.v3.router_pb2"
    ),
    "envoy.extensions.filters.http.fault.v3.HTTPFault": (
        "envoy.extensions.filters.http.fault.v3.fault_pb2"
    ),
    "envoy.extensions.filters.http.rbac.v3.RBAC": "envoy.extensions.filters.http.rbac.v3.rbac_pb2",
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute": (
        "envoy.extensions.filters.http.rbac.v3.rbac_pb2"
    ),
    "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication": (
        "envoy.extensions.filters.http.jwt_authn.v3.config_pb2"
    ),
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz": (
        "envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2"
    ),
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext": (
        "envoy.extensions.transport_sockets.tls.v3.tls_pb2"
    ),
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext": (
        "envoy.extensions.transport_sockets.tls.v3.tls_pb2"
    ),
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": (
        "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2"
    ),
    "google.protobuf.Struct": "google.protobuf.struct_pb2",
}


def pb2_class(type_name: str) -> Any:
    """The generated class of `type_name` (one of PB2_MODULES)."""
    module = importlib.import_module(PB2_MODULES[type_name])
    return getattr(module, type_name.rsplit(".", 1)[-1])


def unpack_any(packed: Any, type_name: str, what: str) -> Any:
    """The `type_name` message inside the Any `packed`, decoded the way
    `packed` was (WireMessage or protobuf); XdsResourceError if it holds
    another type or does not parse."""
    if packed.type_url.rsplit("/", 1)[-1] != type_name:
        raise XdsResourceError(f"cannot unpack {packed.type_url!r} as {what}")
    if isinstance(packed, _wire.WireMessage):
        try:
            return _wire.parse(type_name, packed.value)
        except _wire.WireError as exc:
            raise XdsResourceError(f"cannot parse {what}: {exc}") from None
    from google.protobuf.message import DecodeError

    msg = pb2_class(type_name)()
    try:
        msg.ParseFromString(packed.value)
    except DecodeError as exc:
        raise XdsResourceError(f"cannot parse {what}: {exc}") from None
    return msg


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


def type_name(msg: Any) -> str:
    """The full type name of a protobuf or _wire message."""
    if isinstance(msg, _wire.WireMessage):
        return msg.message_type_name()
    return str(type(msg).DESCRIPTOR.full_name)


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
