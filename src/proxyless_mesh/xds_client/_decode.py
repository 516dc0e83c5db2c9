"""xDS resources -> model objects, with the validation gRPC applies.

Each decoder takes one resource (an `Any`, possibly wrapped in a discovery
`Resource`, or the message itself) and either returns the model object or raises
`XdsResourceError` with the reason the resource is NACKed. Decoding is per
resource: the client decodes siblings independently, so one bad resource never
spoils the others. Route configurations live in `_decode_routes`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from proxyless_mesh.errors import XdsResourceError
from proxyless_mesh.model import (
    OUTBOUND_POLICY_LISTENER,
    OUTBOUND_POLICY_METADATA,
    Cluster,
    ClusterLoadAssignment,
    InboundListener,
    LbPolicy,
    Listener,
    RouteConfiguration,
)
from proxyless_mesh.xds_client import _decode_endpoints as endpoints
from proxyless_mesh.xds_client import _decode_policies as policies
from proxyless_mesh.xds_client import _wire
from proxyless_mesh.xds_client._decode_inbound import decode_inbound_listener
from proxyless_mesh.xds_client._decode_routes import decode_route_configuration_message
from proxyless_mesh.xds_client._decode_security import decode_upstream_tls
from proxyless_mesh.xds_client._message import enum_name, struct_to_python, unpack_any
from proxyless_mesh.xds_client._types import (
    HCM_TYPE_URL,
    RESOURCE_WRAPPER_TYPE_URL,
    ROUTER_TYPE_URL,
    ResourceType,
)
from proxyless_mesh.xds_client._wire import WireMessage

__all__ = [
    "decode_cluster",
    "decode_cluster_load_assignment",
    "decode_listener",
    "decode_resource",
    "decode_route_configuration",
    "resource_name",
    "unpack_resource",
]

_ANY = "google.protobuf.Any"
_CLUSTER = "envoy.config.cluster.v3.Cluster"
_RESOURCE_WRAPPER = "envoy.service.discovery.v3.Resource"
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_EDS = 3  # Cluster.DiscoveryType.EDS

# Cluster.LbPolicy numbers -> our enum
_LB_POLICIES = {
    0: LbPolicy.ROUND_ROBIN,
    1: LbPolicy.LEAST_REQUEST,
    3: LbPolicy.RANDOM,
    2: LbPolicy.RING_HASH,
    5: LbPolicy.MAGLEV,
}

# load_balancing_policy (the typed form) -> our enum; gRPC uses the first it knows.
_TYPED_LB_POLICIES = {
    "type.googleapis.com/envoy.extensions.load_balancing_policies." + suffix: policy
    for suffix, policy in (
        ("round_robin.v3.RoundRobin", LbPolicy.ROUND_ROBIN),
        ("least_request.v3.LeastRequest", LbPolicy.LEAST_REQUEST),
        ("random.v3.Random", LbPolicy.RANDOM),
        ("ring_hash.v3.RingHash", LbPolicy.RING_HASH),
        ("maglev.v3.Maglev", LbPolicy.MAGLEV),
    )
}


def unpack_resource(rtype: ResourceType, resource: Any) -> Any:
    """The typed message inside `resource` (an Any, a discovery `Resource` wrapper
    as allowed by the `xds.config.resource-in-sotw` client feature, or already the
    message) as a `WireMessage`; a ClusterLoadAssignment as the native core's
    `NativeAssignment`. A message of another implementation (protobuf's, as the
    control plane's tools and the tests build them) is read from its bytes, so
    every resource is decoded one way."""
    if isinstance(resource, endpoints.NativeAssignment):
        return resource
    type_name = rtype.type_url.rsplit("/", 1)[-1]
    resource = _as_wire(resource, type_name)
    eds = rtype is ResourceType.CLUSTER_LOAD_ASSIGNMENT
    if resource.message_type_name() == type_name:
        return endpoints.decode(resource.SerializeToString()) if eds else resource
    if resource.message_type_name() != _ANY:
        raise TypeError(f"expected an Any or {type_name}, got {resource.message_type_name()}")
    if resource.type_url == RESOURCE_WRAPPER_TYPE_URL:
        wrapper = unpack_any(resource, _RESOURCE_WRAPPER, "Resource wrapper")
        resource = wrapper.resource
    if resource.type_url != rtype.type_url:
        raise XdsResourceError(
            f"resource has type {resource.type_url!r}, expected {rtype.type_url!r}"
        )
    if eds:
        return endpoints.decode(resource.value)  # no message objects (issue 25)
    return unpack_any(resource, type_name, type_name.rsplit(".", 1)[-1])


def _as_wire(msg: Any, expected: str) -> WireMessage:
    """`msg` as a WireMessage: read again from its bytes when another
    implementation (protobuf's generated classes) built it."""
    if isinstance(msg, WireMessage):
        return msg
    name = getattr(getattr(type(msg), "DESCRIPTOR", None), "full_name", None)
    if not isinstance(name, str):
        raise TypeError(f"expected an Any or {expected}, got {type(msg)}")
    try:
        return _wire.parse(name, msg.SerializeToString())
    except KeyError:  # a type the decoders never read
        raise TypeError(f"expected an Any or {expected}, got {name}") from None
    except _wire.WireError as exc:
        raise XdsResourceError(f"cannot parse {name}: {exc}") from None


def resource_name(rtype: ResourceType, msg: Any) -> str:
    """The name a resource is subscribed by (EDS resources by `cluster_name`)."""
    if rtype is ResourceType.CLUSTER_LOAD_ASSIGNMENT:
        return str(msg.cluster_name)
    return str(msg.name)


def decode_listener(resource: Any) -> Listener | InboundListener:
    """A client-side Listener (an api_listener holding an HttpConnectionManager)
    -> Listener; a server-side one (address + filter chains, gRFC A36) ->
    InboundListener (see `_decode_inbound`). The xDS client checks that it is
    the side the name was watched for."""
    msg = unpack_resource(ResourceType.LISTENER, resource)
    if not msg.name:
        raise XdsResourceError("Listener has no name")
    listener = (
        _client_listener(msg) if msg.HasField("api_listener") else decode_inbound_listener(msg)
    )
    telemetry = telemetry_metadata(msg)
    if telemetry is not None:
        listener = replace(listener, telemetry=telemetry)
    if OUTBOUND_POLICY_METADATA in msg.metadata.filter_metadata:
        mode = _outbound_policy(msg)  # raises unless a client listener, so a Listener
        if isinstance(listener, Listener):
            listener = replace(listener, outbound_policy=mode)
    return listener


_OUTBOUND_MODES = ("ALLOW_ANY", "REGISTRY_ONLY")


def _outbound_policy(msg: Any) -> str:
    """The Sidecar's outboundTrafficPolicy mode carried by the listener
    named OUTBOUND_POLICY_LISTENER (and by no other)."""
    if msg.name != OUTBOUND_POLICY_LISTENER or not msg.HasField("api_listener"):
        raise XdsResourceError(
            f"metadata {OUTBOUND_POLICY_METADATA!r} is only valid on the client listener "
            f"{OUTBOUND_POLICY_LISTENER!r}"
        )
    try:
        value = struct_to_python(msg.metadata.filter_metadata[OUTBOUND_POLICY_METADATA])
    except ValueError as exc:
        raise XdsResourceError(f"metadata {OUTBOUND_POLICY_METADATA!r}: {exc}") from None
    mode = value.get("mode")
    if mode not in _OUTBOUND_MODES:
        raise XdsResourceError(
            f"metadata {OUTBOUND_POLICY_METADATA!r}: mode {mode!r} is not one of "
            f"{', '.join(_OUTBOUND_MODES)}"
        )
    return str(mode)


#: Node-scoped listener metadata: the Telemetry API specs for this workload.
TELEMETRY_METADATA = "proxyless_mesh.io/telemetry"


def telemetry_metadata(msg: Any) -> str | None:
    """The Telemetry specs a listener carries (`{"specs": [...]}`), as
    canonical JSON, checked when applied (Mesh); None when it carries none."""
    if TELEMETRY_METADATA not in msg.metadata.filter_metadata:
        return None
    try:
        value = struct_to_python(msg.metadata.filter_metadata[TELEMETRY_METADATA])
    except ValueError as exc:
        raise XdsResourceError(f"metadata {TELEMETRY_METADATA!r}: {exc}") from None
    specs = value.get("specs")
    if not isinstance(specs, list):
        raise XdsResourceError(f"metadata {TELEMETRY_METADATA!r}: expected a list 'specs'")
    return json.dumps(specs, sort_keys=True)


def _client_listener(msg: Any) -> Listener:
    inner = msg.api_listener.api_listener
    if inner.type_url != HCM_TYPE_URL:
        raise XdsResourceError(
            f"api_listener holds {inner.type_url!r}, expected an HttpConnectionManager"
        )
    hcm = unpack_any(inner, _HCM, "HttpConnectionManager")
    _check_http_filters(hcm.http_filters)
    which = hcm.WhichOneof("route_specifier")
    if which == "rds":
        _check_config_source(hcm.rds.config_source, "HttpConnectionManager.rds.config_source")
        if not hcm.rds.route_config_name:
            raise XdsResourceError("HttpConnectionManager.rds.route_config_name is empty")
        return Listener(name=msg.name, rds_name=hcm.rds.route_config_name)
    if which == "route_config":
        try:
            routes = decode_route_configuration_message(hcm.route_config)
        except XdsResourceError as exc:
            raise XdsResourceError(f"inline route_config: {exc}") from None
        return Listener(name=msg.name, inline_routes=routes)
    if which == "scoped_routes":
        raise XdsResourceError("HttpConnectionManager.scoped_routes is not supported")
    raise XdsResourceError("HttpConnectionManager has neither rds nor route_config")


def decode_route_configuration(resource: Any) -> RouteConfiguration:
    """A RouteConfiguration (RDS)."""
    msg = unpack_resource(ResourceType.ROUTE_CONFIGURATION, resource)
    return decode_route_configuration_message(msg)


def decode_cluster(resource: Any) -> Cluster:
    """An EDS cluster fed over ADS, with a load-balancing policy the mesh knows
    and its tables, outlier detection, limits and timeouts (`_decode_policies`)."""
    msg = unpack_resource(ResourceType.CLUSTER, resource)
    if not msg.name:
        raise XdsResourceError("Cluster has no name")
    if msg.WhichOneof("cluster_discovery_type") == "cluster_type":
        raise XdsResourceError(
            f"cluster_type {msg.cluster_type.name!r} (custom cluster types) is not supported"
        )
    if msg.type != _EDS:
        kind = enum_name(f"{_CLUSTER}.DiscoveryType", msg.type)
        raise XdsResourceError(f"discovery type {kind} is not supported (only EDS)")
    _check_config_source(msg.eds_cluster_config.eds_config, "eds_cluster_config.eds_config")
    lb_policy = _lb_policy(msg)
    idle_timeout, max_requests_per_connection = policies.http_options(msg)
    extra: dict[str, Any] = {}
    if msg.HasField("connect_timeout"):
        extra["connect_timeout"] = policies.seconds(msg.connect_timeout, "connect_timeout")
    return Cluster(
        name=msg.name,
        eds_service_name=msg.eds_cluster_config.service_name or msg.name,
        lb_policy=lb_policy,
        ring_hash=policies.ring_hash(msg) if lb_policy is LbPolicy.RING_HASH else None,
        maglev=policies.maglev(msg) if lb_policy is LbPolicy.MAGLEV else None,
        slow_start=policies.slow_start(msg),
        outlier_detection=policies.outlier_detection(msg),
        circuit_breakers=policies.circuit_breakers(msg),
        panic_threshold=policies.panic_threshold(msg),
        idle_timeout=idle_timeout,
        max_requests_per_connection=max_requests_per_connection,
        tls=decode_upstream_tls(msg),
        **extra,
    )


def decode_cluster_load_assignment(resource: Any) -> ClusterLoadAssignment:
    """Endpoints by locality (see `_decode_endpoints`)."""
    view = unpack_resource(ResourceType.CLUSTER_LOAD_ASSIGNMENT, resource).view
    return endpoints.assignment_from_view(view)


DECODERS: dict[ResourceType, Callable[[Any], Any]] = {
    ResourceType.LISTENER: decode_listener,
    ResourceType.ROUTE_CONFIGURATION: decode_route_configuration,
    ResourceType.CLUSTER: decode_cluster,
    ResourceType.CLUSTER_LOAD_ASSIGNMENT: decode_cluster_load_assignment,
}


def decode_resource(rtype: ResourceType, msg: Any) -> Any:
    """Decode an unpacked message of type `rtype` into its model object."""
    return DECODERS[rtype](msg)


def _check_config_source(source: Any, where: str) -> None:
    """Only ADS is spoken: the resource must come over this same stream."""
    if source.WhichOneof("config_source_specifier") not in ("ads", "self"):
        raise XdsResourceError(f"{where}: ConfigSource is not ads or self")


def _check_http_filters(filters: Any) -> None:
    """The router filter must be present and last: it is what forwards the
    request, so filters after it would never run (gRPC NACKs the same)."""
    if not filters:
        raise XdsResourceError("http_filters is empty: the router filter must be last")
    last = len(filters) - 1
    for i, f in enumerate(filters):
        url = f.typed_config.type_url if f.HasField("typed_config") else ""
        if not url and not f.is_optional:
            raise XdsResourceError(f"http filter {f.name!r} has no typed_config")
        if url == ROUTER_TYPE_URL and i != last:
            raise XdsResourceError(f"router filter {f.name!r} is not the last http filter")
        if i == last and url != ROUTER_TYPE_URL:
            raise XdsResourceError(
                f"the last http filter must be the router, got {f.name!r} ({url or 'no config'})"
            )


def _lb_policy(msg: Any) -> LbPolicy:
    """gRPC prefers the typed `load_balancing_policy` when set, taking the first
    policy it supports; otherwise the `lb_policy` enum."""
    if msg.HasField("load_balancing_policy"):
        urls = [
            p.typed_extension_config.typed_config.type_url
            for p in msg.load_balancing_policy.policies
        ]
        for url in urls:
            if url in _TYPED_LB_POLICIES:
                return _TYPED_LB_POLICIES[url]
        raise XdsResourceError(f"load_balancing_policy has no supported policy (got {urls})")
    policy = _LB_POLICIES.get(msg.lb_policy)
    if policy is None:
        name = enum_name(f"{_CLUSTER}.LbPolicy", msg.lb_policy)
        raise XdsResourceError(f"lb_policy {name} is not supported")
    return policy
