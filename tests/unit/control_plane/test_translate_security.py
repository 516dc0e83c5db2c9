"""Security intent on the wire: upstream mTLS on clusters, inbound listeners
with downstream TLS, jwt_authn and RBAC, per client kind and workload; and the
library's decoder reads back exactly what was meant."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from mesh_control_plane.config.model import (
    MeshConfig,
    MeshSettings,
    PeerAuthentication,
    RequestAuthentication,
)
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import (
    CLUSTER,
    LISTENER,
    ClientKind,
    NodeInfo,
    ResourceSet,
    check_consistency,
    translate,
)
from mesh_control_plane.translate.inbound import peer_mode
from mesh_control_plane.translate.rbac_protos import JWT_FILTER_NAME

from proxyless_mesh.model import InboundListener, RbacAction, TlsMode, UpstreamTls
from proxyless_mesh.xds_client import decode_cluster, decode_listener

from .samples import JWKS, LEDGER, LEGACY, PAYMENTS, meta, security
from .test_translate_golden import GOLDEN, render

PAYMENTS_NODE = dict(
    id="payments-1",
    namespace="shop",
    service_account="payments",
    labels=(("app", "payments"),),
)
SERVER = "grpc/server?xds.resource.listening_address="


def resources(kind: ClientKind, config: MeshConfig | None = None, **node: object) -> ResourceSet:
    config = config or security()
    info = NodeInfo(**{"id": "n", "kind": kind, **node})  # type: ignore[arg-type]
    rs = translate(config, build_static_registry(config), info)
    assert check_consistency(rs) == []
    return rs


@pytest.mark.parametrize("kind", [ClientKind.GRPC, ClientKind.MESH], ids=lambda k: k.value)
def test_security_golden_for_a_workload(kind: ClientKind) -> None:
    rendered = render(resources(kind, **PAYMENTS_NODE))
    path = GOLDEN / f"security_workload.{kind.value}.json"
    if os.environ.get("REFRESH_GOLDEN") == "1":
        path.write_text(rendered)
    assert rendered == path.read_text(), f"{path} differs: REFRESH_GOLDEN=1 and review the diff"


def test_upstream_tls_follows_auto_mtls_and_destination_rules() -> None:
    clusters = {
        name: decode_cluster(msg)
        for name, msg in resources(ClientKind.MESH).resources[CLUSTER].items()
    }
    spiffe = "spiffe://cluster.local/ns/shop/sa/"
    assert clusters[f"outbound|8080||{PAYMENTS}"].tls == UpstreamTls(
        (spiffe + "payments",), PAYMENTS
    )
    assert clusters[f"outbound|8080||{LEDGER}"].tls == UpstreamTls((spiffe + "ledger",), LEDGER)
    assert clusters[f"outbound|8080|v2|{LEDGER}"].tls is None  # subset tls DISABLE
    assert clusters[f"outbound|8080||{LEGACY}"].tls is None  # one instance has no identity
    envoy = resources(ClientKind.ENVOY).resources[CLUSTER]
    assert not any(c.HasField("transport_socket") for c in envoy.values())  # type: ignore[attr-defined]


def test_trust_domain_names_the_identities() -> None:
    config = replace(security(), settings=MeshSettings(trust_domain="example.org"))
    rs = translate(config, build_static_registry(config), NodeInfo(id="n", kind=ClientKind.GRPC))
    tls = decode_cluster(rs.resources[CLUSTER][f"outbound|8080||{PAYMENTS}"]).tls
    assert tls is not None
    assert tls.expected_spiffe_ids == ("spiffe://example.org/ns/shop/sa/payments",)


def inbound(kind: ClientKind, **node: object) -> dict[str, InboundListener]:
    out = {}
    for name, msg in resources(kind, **node).resources[LISTENER].items():
        if name.startswith(SERVER):
            decoded = decode_listener(msg)
            assert isinstance(decoded, InboundListener)
            out[name] = decoded
    return out


def test_inbound_listeners_carry_the_workload_policies() -> None:
    listeners = inbound(ClientKind.MESH, **PAYMENTS_NODE)
    assert sorted(listeners) == [
        SERVER + "0.0.0.0:9000",
        SERVER + "10.4.0.1:9000",
        SERVER + "[::]:9000",
    ]
    listener = listeners[SERVER + "10.4.0.1:9000"]
    assert (listener.address, listener.port) == ("10.4.0.1", 9000)
    assert listener.tls_mode is TlsMode.PERMISSIVE  # port override over the mesh's STRICT
    assert [engine.action for engine in listener.rbac] == [
        RbacAction.LOG,
        RbacAction.DENY,
        RbacAction.ALLOW,
    ]
    allow = listener.rbac[2]
    assert [name for name, _ in allow.policies] == ["ns[shop]-policy[allow-web]-rule[0]"]
    assert listener.jwt is not None
    assert [(p.issuer, p.jwks) for p in listener.jwt.providers] == [
        ("https://issuer.example", JWKS)
    ]


def test_a_jwt_rule_without_issuer_becomes_a_provider_with_an_empty_issuer() -> None:
    """Envoy does not check `iss` for a JwtProvider whose issuer is empty: that
    is what a JWTRule without issuer means, and what the library decodes."""
    config = security()
    (ra,) = config.request_authentications
    rules = [*ra.spec["jwtRules"], {"jwks": JWKS, "audiences": ["api"]}]
    config = replace(
        config,
        request_authentications=(RequestAuthentication(ra.meta, {**ra.spec, "jwtRules": rules}),),
    )
    rs = resources(ClientKind.MESH, config, **PAYMENTS_NODE)
    raw = rs.resources[LISTENER][SERVER + "10.4.0.1:9000"]
    assert isinstance(raw, listener_pb2.Listener)
    manager = hcm_pb2.HttpConnectionManager()
    assert raw.filter_chains[0].filters[0].typed_config.Unpack(manager)
    (jwt_filter,) = [f for f in manager.http_filters if f.name == JWT_FILTER_NAME]
    wire = jwt_pb2.JwtAuthentication()
    assert jwt_filter.typed_config.Unpack(wire)
    assert sorted((p.issuer, list(p.audiences)) for p in wire.providers.values()) == [
        ("", ["api"]),
        ("https://issuer.example", []),
    ]
    decoded = decode_listener(raw)
    assert isinstance(decoded, InboundListener) and decoded.jwt is not None
    assert [(p.issuer, p.audiences) for p in decoded.jwt.providers] == [
        ("https://issuer.example", ()),
        ("", ("api",)),
    ]


def test_grpc_gets_what_it_implements() -> None:
    listener = inbound(ClientKind.GRPC, **PAYMENTS_NODE)[SERVER + "0.0.0.0:9000"]
    assert listener.jwt is None  # gRPC has no jwt_authn
    assert listener.tls_mode is TlsMode.STRICT  # PERMISSIVE: gRPC cannot sniff; mTLS chain only
    raw = resources(ClientKind.GRPC, **PAYMENTS_NODE).resources[LISTENER][SERVER + "0.0.0.0:9000"]
    assert isinstance(raw, listener_pb2.Listener)
    assert not raw.listener_filters and len(raw.filter_chains) == 1


def test_which_nodes_get_inbound_listeners() -> None:
    assert inbound(ClientKind.MESH) == {}  # says nothing about itself
    assert inbound(ClientKind.MESH, service_account="nobody") == {}
    by_ip = inbound(ClientKind.GRPC, instance_ips=("10.4.0.5",))
    assert sorted(by_ip) == [
        SERVER + "0.0.0.0:9000",
        SERVER + "10.4.0.5:9000",
        SERVER + "[::]:9000",
    ]
    assert inbound(ClientKind.ENVOY, **PAYMENTS_NODE) == {}


def test_peer_authentication_precedence() -> None:
    config = security()
    node = NodeInfo(id="n", kind=ClientKind.MESH, namespace="shop", labels=(("app", "payments"),))
    assert peer_mode(config, node, 9000) == "PERMISSIVE"  # workload port-level
    assert peer_mode(config, node, 9001) == "STRICT"  # workload UNSET -> mesh-wide
    wide = PeerAuthentication(meta("PeerAuthentication", "ns", "shop"), mode="DISABLE")
    config = replace(config, peer_authentications=(*config.peer_authentications, wide))
    assert peer_mode(config, node, 9001) == "DISABLE"  # namespace over mesh
    other = replace(node, namespace="web", labels=())
    assert peer_mode(config, other, 9001) == "STRICT"
    assert peer_mode(replace(config, peer_authentications=()), other, 1) == "PERMISSIVE"


def test_node_identity_is_part_of_the_cache_key() -> None:
    a = NodeInfo(id="a", kind=ClientKind.GRPC, namespace="shop", service_account="x")
    assert a.cache_key != replace(a, namespace="web").cache_key
    assert a.cache_key != replace(a, service_account="y").cache_key
    assert a.cache_key != replace(a, instance_ips=("10.0.0.1",)).cache_key
    assert a.cache_key == replace(a, id="b").cache_key


def test_node_reads_istio_metadata_keys() -> None:
    from envoy.config.core.v3 import base_pb2

    node = base_pb2.Node(id="n", user_agent_name="proxyless-mesh")
    node.metadata.update(
        {
            "NAMESPACE": "shop",
            "SERVICE_ACCOUNT": "payments",
            "INSTANCE_IPS": "10.4.0.1, 10.4.0.9,",
            "LABELS": {"app": "payments"},
        }
    )
    info = NodeInfo.from_proto(node)
    assert (info.namespace, info.service_account) == ("shop", "payments")
    assert info.instance_ips == ("10.4.0.1", "10.4.0.9")
    assert NodeInfo.from_proto(base_pb2.Node(id="m")).namespace == "default"


@pytest.mark.parametrize("mode", ["BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"])
def test_path_normalization_reaches_the_library(mode: str) -> None:
    """Istio's pathNormalization (a control-plane flag) travels in the inbound
    HCM to the library, whose policy engine then normalizes that way."""
    from proxyless_mesh.policy import InboundRequest, PathNormalization, PolicySet

    config = replace(security(), settings=MeshSettings(path_normalization=mode))
    info = NodeInfo(kind=ClientKind.MESH, **PAYMENTS_NODE)  # type: ignore[arg-type]
    rs = translate(config, build_static_registry(config), info)
    decoded = decode_listener(rs.resources[LISTENER][SERVER + "10.4.0.1:9000"])
    assert isinstance(decoded, InboundListener)
    assert decoded.path_normalization == mode
    policies = PolicySet((), None, PathNormalization(decoded.path_normalization))
    request = InboundRequest(method="GET", target=b"//a//b", headers={"host": "h"})
    decision = policies.check(request)
    assert decision.path == ("//a//b" if mode == "BASE" else "/a/b")


def test_grpc_servers_get_no_normalization_fields() -> None:
    config = replace(security(), settings=MeshSettings(path_normalization="MERGE_SLASHES"))
    info = NodeInfo(kind=ClientKind.GRPC, **PAYMENTS_NODE)  # type: ignore[arg-type]
    rs = translate(config, build_static_registry(config), info)
    listener = rs.resources[LISTENER][SERVER + "10.4.0.1:9000"]
    assert isinstance(listener, listener_pb2.Listener)
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert not manager.merge_slashes and not manager.HasField("normalize_path")


def test_auto_mtls_follows_the_destinations_peer_authentication() -> None:
    """Istio's auto mTLS: plaintext toward workloads whose PeerAuthentication
    is DISABLE (a DestinationRule's explicit tls still wins)."""
    config = security()
    name = f"outbound|8080||{PAYMENTS}"

    def tls_of(cfg: object) -> UpstreamTls | None:
        info = NodeInfo(id="n", kind=ClientKind.GRPC)
        rs = translate(cfg, build_static_registry(cfg), info)  # type: ignore[arg-type]
        return decode_cluster(rs.resources[CLUSTER][name]).tls

    assert tls_of(config) is not None
    off = PeerAuthentication(meta("PeerAuthentication", "off", "shop"), mode="DISABLE")
    disabled = replace(config, peer_authentications=(off,))
    assert tls_of(disabled) is None
