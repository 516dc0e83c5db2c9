"""Envoy itself checks our shapes: ``envoy --mode validate`` on every sample.

Envoy validates each resource against its proto constraints and its own rules when
it loads a bootstrap, without connecting anywhere. The translated listener and
clusters go in as they are (their RDS/EDS still point at ADS); the route
configuration is also inlined into a second listener and each ClusterLoadAssignment
into a static cluster, so that Envoy validates those too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    ClientKind,
    NodeInfo,
    ResourceSet,
    translate,
)
from processes import envoy_binary

from .samples import SAMPLES

pytestmark = pytest.mark.interop  # runs a real Envoy (--mode validate)


def bootstrap_for(rs: ResourceSet) -> bootstrap_pb2.Bootstrap:
    boot = bootstrap_pb2.Bootstrap()
    boot.node.id, boot.node.cluster = "validate", "validate"
    ads = boot.dynamic_resources.ads_config
    ads.api_type = config_source_pb2.ApiConfigSource.GRPC
    ads.transport_api_version = config_source_pb2.V3
    ads.grpc_services.add().envoy_grpc.cluster_name = "xds"
    boot.dynamic_resources.cds_config.ads.SetInParent()
    boot.dynamic_resources.cds_config.resource_api_version = config_source_pb2.V3

    xds = boot.static_resources.clusters.add(name="xds", type=cluster_pb2.Cluster.STATIC)
    xds.load_assignment.cluster_name = "xds"
    socket = xds.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    socket.address, socket.port_value = "127.0.0.1", 1
    xds.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].Pack(_h2_options())

    for listener in rs.resources[LISTENER].values():
        boot.static_resources.listeners.add().CopyFrom(listener)
    for index, route_config in enumerate(rs.resources[ROUTE].values()):
        manager = hcm_pb2.HttpConnectionManager(stat_prefix=f"inline{index}")
        manager.route_config.CopyFrom(route_config)
        manager.http_filters.extend(_filters(rs))
        inline = listener_pb2.Listener(name=f"inline-routes-{index}")
        inline.address.socket_address.address = "127.0.0.1"
        inline.address.socket_address.port_value = 0
        inline.filter_chains.add().filters.add(
            name="envoy.filters.network.http_connection_manager"
        ).typed_config.Pack(manager)
        boot.static_resources.listeners.add().CopyFrom(inline)
    for cluster in rs.resources[CLUSTER].values():
        boot.static_resources.clusters.add().CopyFrom(cluster)
    for index, assignment in enumerate(rs.resources[ENDPOINT].values()):
        static = boot.static_resources.clusters.add(
            name=f"inline-endpoints-{index}", type=cluster_pb2.Cluster.STATIC
        )
        static.load_assignment.CopyFrom(assignment)
        static.load_assignment.cluster_name = static.name
    return boot


def _h2_options() -> http_protocol_options_pb2.HttpProtocolOptions:
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.SetInParent()
    return options


def _filters(rs: ResourceSet) -> list[hcm_pb2.HttpFilter]:
    """The outbound listener's HTTP filters (fault, router), so that per-route
    filter configs are validated by the filter they configure."""
    listener: Any = next(iter(rs.resources[LISTENER].values()))
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert [f.name for f in manager.http_filters][-1] == "envoy.filters.http.router"
    return list(manager.http_filters)


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_envoy_validates_translation(sample: str, tmp_path: Path) -> None:
    config = SAMPLES[sample]()
    rs = translate(config, build_static_registry(config), NodeInfo(id="e", kind=ClientKind.ENVOY))
    path = tmp_path / "bootstrap.json"
    path.write_text(json_format.MessageToJson(bootstrap_for(rs)))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr
