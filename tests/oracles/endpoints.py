"""The reference the native core is held to; not shipped.

The view of a ClusterLoadAssignment (`_decode_endpoints.AssignmentView`)
as the protobuf runtime reads the bytes: what the library computed from a
protobuf message before the native core became mandatory (issue 25).
tests/property/test_native_decode_props.py demands the native
`decode_cluster_load_assignment` give the same view, or refuse the bytes
protobuf refuses (DecodeError)."""

from __future__ import annotations

from typing import Any

from envoy.config.endpoint.v3 import endpoint_pb2

from proxyless_mesh.xds_client._decode_endpoints import (
    AssignmentView,
    EndpointView,
    LocalityView,
)

__all__ = ["protobuf_view", "view_from_message"]

ISTIO_METADATA = "istio"  # Istio's filter metadata namespace on endpoints


def protobuf_view(data: bytes) -> AssignmentView:
    """The view of `data`, parsed by protobuf (DecodeError if it refuses)."""
    msg = endpoint_pb2.ClusterLoadAssignment()
    msg.ParseFromString(data)
    return view_from_message(msg)


def view_from_message(msg: Any) -> AssignmentView:
    """The view of an envoy.config.endpoint.v3.ClusterLoadAssignment message."""
    factor = (
        msg.policy.overprovisioning_factor.value
        if msg.policy.HasField("overprovisioning_factor")
        else None
    )
    return (msg.cluster_name, factor, [_locality_view(lle) for lle in msg.endpoints])


def _locality_view(lle: Any) -> LocalityView:
    weight = lle.load_balancing_weight.value if lle.HasField("load_balancing_weight") else None
    endpoints = [_endpoint_view(lb) for lb in lle.lb_endpoints]
    loc = lle.locality
    return (loc.region, loc.zone, loc.sub_zone, weight, lle.priority, endpoints)


def _endpoint_view(lb: Any) -> EndpointView:
    address = lb.endpoint.address
    kind = address.WhichOneof("address")
    sa = address.socket_address
    port = sa.port_value if sa.WhichOneof("port_specifier") == "port_value" else None
    weight = lb.load_balancing_weight.value if lb.HasField("load_balancing_weight") else None
    host = lb.WhichOneof("host_identifier")
    return (host, kind, sa.address, port, weight, lb.health_status, _workload_metadata(lb))


def _workload_metadata(lb: Any) -> str:
    """Istio's `istio` filter metadata `workload` string of an endpoint, "" if none."""
    istio = lb.metadata.filter_metadata.get(ISTIO_METADATA)
    if istio is None:
        return ""
    value = istio.fields.get("workload")
    return value.string_value if value is not None else ""
