"""Decoding EDS (ClusterLoadAssignment) into model objects, and each reason one is NACKed."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from test_xds_decode import packed, rejects

from proxyless_mesh.model import (
    ClusterLoadAssignment,
    Endpoint,
    HealthStatus,
    Locality,
    LocalityEndpoints,
)
from proxyless_mesh.xds_client import ResourceType, decode_cluster_load_assignment
from proxyless_mesh.xds_client._codec import any_message
from proxyless_mesh.xds_client._decode import unpack_resource
from proxyless_mesh.xds_client._decode_endpoints import NativeAssignment

EDS = ResourceType.CLUSTER_LOAD_ASSIGNMENT


def lb_endpoint(address: str, port: int, weight: int | None = None, health: int = 0) -> Any:
    ep = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=address, port_value=port)
            )
        ),
        health_status=health,
    )
    if weight is not None:
        ep.load_balancing_weight.value = weight
    return ep


def locality(zone: str, *eps: Any, weight: int | None = 1, priority: int = 0) -> Any:
    out = endpoint_components_pb2.LocalityLbEndpoints(
        locality=base_pb2.Locality(region="eu", zone=zone),
        lb_endpoints=list(eps),
        priority=priority,
    )
    if weight is not None:
        out.load_balancing_weight.value = weight
    return out


def cla(*localities: Any) -> Any:
    return endpoint_pb2.ClusterLoadAssignment(cluster_name="svc", endpoints=list(localities))


def test_cluster_load_assignment() -> None:
    msg = cla(
        locality(
            "a", lb_endpoint("10.0.0.1", 8080), lb_endpoint("10.0.0.2", 8080, 3, health=1), weight=2
        ),
        locality("b", lb_endpoint("10.0.1.1", 8080, health=3), priority=1),
        locality("no-weight", lb_endpoint("10.0.2.1", 8080), weight=None),
        locality("zero-weight", lb_endpoint("10.0.3.1", 8080), weight=0),
    )
    assert decode_cluster_load_assignment(packed(msg)) == ClusterLoadAssignment(
        cluster_name="svc",
        localities=(
            LocalityEndpoints(
                locality=Locality("eu", "a"),
                endpoints=(
                    Endpoint("10.0.0.1", 8080),
                    Endpoint("10.0.0.2", 8080, weight=3, health=HealthStatus.HEALTHY),
                ),
                weight=2,
            ),
            LocalityEndpoints(
                locality=Locality("eu", "b"),
                endpoints=(Endpoint("10.0.1.1", 8080, health=HealthStatus.DRAINING),),
                weight=1,
                priority=1,
            ),
        ),
    )


def test_endpoint_keeps_istios_telemetry_metadata() -> None:
    named = lb_endpoint("10.0.0.1", 8080)
    named.metadata.filter_metadata["istio"].fields[
        "workload"
    ].string_value = "ratings-vm-1;shop;ratings;v3;Kubernetes"
    other = lb_endpoint("10.0.0.2", 8080)
    other.metadata.filter_metadata["other"].fields["workload"].string_value = "not istio's"
    [group] = decode_cluster_load_assignment(packed(cla(locality("a", named, other)))).localities
    assert [e.workload for e in group.endpoints] == ["ratings-vm-1;shop;ratings;v3;Kubernetes", ""]


def test_every_form_of_an_assignment_is_decoded_natively() -> None:
    """Packed, wrapped in a discovery Resource (xds.config.resource-in-sotw),
    already parsed, or protobuf's message: the native core decodes the bytes,
    which stay what the client records (CSDS, the disk cache), unwrapped."""
    msg = cla(locality("a", lb_endpoint("10.0.0.1", 8080)))
    wrapped = packed(discovery_pb2.Resource(name="svc", resource=packed(msg)))
    parsed = any_message(EDS.type_url, msg.SerializeToString())
    for form in (packed(msg), wrapped, parsed, msg):
        unpacked = unpack_resource(EDS, form)
        assert isinstance(unpacked, NativeAssignment)
        assert unpacked.SerializeToString() == msg.SerializeToString()
        assert decode_cluster_load_assignment(form).localities[0].endpoints == (
            Endpoint("10.0.0.1", 8080),
        )


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (endpoint_pb2.ClusterLoadAssignment(), "ClusterLoadAssignment has no cluster_name"),
        (
            cla(locality("a", lb_endpoint("10.0.0.1", 0))),
            "endpoints[0].lb_endpoints[0]: invalid port",
        ),
        (cla(locality("a", lb_endpoint("10.0.0.1", 70000))), "invalid port"),
        (cla(locality("a", lb_endpoint("", 80))), "empty address"),
        (
            cla(locality("a", lb_endpoint("10.0.0.1", 80, weight=0))),
            "load_balancing_weight must be greater than 0",
        ),
        (
            cla(
                locality("a", lb_endpoint("10.0.0.1", 80)),
                locality("b", lb_endpoint("10.0.0.1", 80)),
            ),
            "endpoints[1].lb_endpoints[0]: duplicate endpoint address 10.0.0.1:80",
        ),
        (cla(locality("a", lb_endpoint("10.0.0.1", 80), priority=1)), "sparse priority list [1]"),
        (
            cla(locality("a", endpoint_components_pb2.LbEndpoint(endpoint_name="named"))),
            "only inline endpoints are supported",
        ),
        (
            cla(
                locality(
                    "a",
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(pipe=address_pb2.Pipe(path="/s"))
                        )
                    ),
                )
            ),
            "only socket_address endpoints are supported",
        ),
    ],
)
def test_cluster_load_assignment_rejections(msg: Any, reason: str) -> None:
    rejects(decode_cluster_load_assignment, msg, reason)
