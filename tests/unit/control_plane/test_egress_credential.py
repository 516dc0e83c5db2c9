"""DestinationRule `tls.credentialName`: at a gateway, TLS origination takes
the credential by SDS (as Istio's egress gateways do); other clients keep the
rule's files, as Istio's sidecars do."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from mesh_control_plane.config import ConfigLoadError, MeshConfig, parse_documents
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import CLUSTER, ClientKind, NodeInfo, translate

HOST = "api.external.test"
CLUSTER_NAME = f"outbound|443||{HOST}"


def load(tls: dict[str, Any]) -> MeshConfig:
    entry = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "api", "namespace": "egress"},
        "spec": {
            "hosts": [HOST],
            "resolution": "STATIC",
            "ports": [{"number": 443, "name": "http", "protocol": "HTTP"}],
            "endpoints": [{"address": "10.0.0.9"}],
        },
    }
    rule = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "api", "namespace": "egress"},
        "spec": {"host": HOST, "trafficPolicy": {"tls": tls}},
    }
    return parse_documents([("dr.yaml", entry), ("dr.yaml", rule)])


def upstream(config: MeshConfig, node: NodeInfo) -> tls_pb2.UpstreamTlsContext:
    cluster: Any = translate(config, build_static_registry(config), node).resources[CLUSTER][
        CLUSTER_NAME
    ]
    context = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(context)
    return context


def test_a_gateway_originates_with_the_credential_and_others_with_the_files() -> None:
    config = load({"mode": "MUTUAL", "credentialName": "api-client", "sni": HOST})
    gateway = NodeInfo(id="router~x", kind=ClientKind.ENVOY, router=True)
    context = upstream(config, gateway).common_tls_context
    assert [s.name for s in context.tls_certificate_sds_secret_configs] == [
        "kubernetes://api-client"
    ]
    combined = context.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == "kubernetes://api-client-cacert"
    sans = combined.default_validation_context.match_typed_subject_alt_names
    assert [m.matcher.exact for m in sans] == [HOST]
    library = upstream(config, NodeInfo(id="c", kind=ClientKind.MESH)).common_tls_context
    assert not library.tls_certificates  # no files given: no client certificate (as Istio)
    assert library.validation_context.HasField("system_root_certs")


def test_credential_name_is_for_origination_modes() -> None:
    with pytest.raises(ConfigLoadError) as caught:
        load({"mode": "ISTIO_MUTUAL", "credentialName": "x"})
    assert "spec.trafficPolicy.tls.credentialName: is for SIMPLE or MUTUAL, not ISTIO_MUTUAL" in (
        str(caught.value)
    )
