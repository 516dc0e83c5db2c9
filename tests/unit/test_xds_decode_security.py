"""Decoding the security intent: upstream TLS on clusters, server (inbound)
listeners, the jwt_authn filter; and NACKs for what the mesh cannot do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message
from mesh_control_plane.translate.rbac_protos import (
    jwt_authentication_to_proto,
    rbac_filter_to_proto,
)
from wire_support import as_wire

from proxyless_mesh.errors import XdsResourceError
from proxyless_mesh.model import (
    AnyRule,
    InboundListener,
    JwtAuthentication,
    JwtHeader,
    JwtProvider,
    Policy,
    Rbac,
    RbacAction,
    TlsMode,
    UpstreamTls,
)
from proxyless_mesh.policy import PolicyConfigError
from proxyless_mesh.xds_client import decode_cluster, decode_listener
from proxyless_mesh.xds_client._decode_rbac import jwt_authentication_from_proto
from proxyless_mesh.xds_client._protocol import AdsProtocol

SPIFFE = "spiffe://cluster.local/ns/shop/sa/reviews"
TLS = "envoy.transport_sockets.tls"


def pack(msg: Message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg)
    return out


def common(instance: str = "default") -> tls_pb2.CommonTlsContext:
    ctx = tls_pb2.CommonTlsContext()
    ctx.tls_certificate_provider_instance.instance_name = instance
    ctx.tls_certificate_provider_instance.certificate_name = "default"
    roots = ctx.validation_context.ca_certificate_provider_instance
    roots.instance_name, roots.certificate_name = "default", "ROOTCA"
    return ctx


def cluster(ctx: tls_pb2.UpstreamTlsContext | None) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.EDS)
    c.eds_cluster_config.eds_config.ads.SetInParent()
    if ctx is not None:
        c.transport_socket.CopyFrom(base_pb2.TransportSocket(name=TLS, typed_config=pack(ctx)))
    return c


def upstream(**changes: Any) -> tls_pb2.UpstreamTlsContext:
    ctx = tls_pb2.UpstreamTlsContext(common_tls_context=common(), sni="reviews.mesh")
    ctx.common_tls_context.validation_context.match_subject_alt_names.add(exact=SPIFFE)
    for key, value in changes.items():
        setattr(ctx, key, value)
    return ctx


def test_upstream_tls_decodes_to_expected_ids() -> None:
    assert decode_cluster(cluster(None)).tls is None
    assert decode_cluster(cluster(upstream())).tls == UpstreamTls((SPIFFE,), "reviews.mesh")
    typed = tls_pb2.UpstreamTlsContext(common_tls_context=common())
    typed.common_tls_context.validation_context.match_typed_subject_alt_names.add(
        san_type=common_pb2.SubjectAltNameMatcher.URI,
        matcher=string_pb2.StringMatcher(exact=SPIFFE),
    )
    assert decode_cluster(cluster(typed)).tls == UpstreamTls((SPIFFE,), "")


def _other_instance(ctx: tls_pb2.UpstreamTlsContext) -> None:
    ctx.common_tls_context.tls_certificate_provider_instance.instance_name = "spire"


def _prefix_san(ctx: tls_pb2.UpstreamTlsContext) -> None:
    ctx.common_tls_context.validation_context.match_subject_alt_names.add(prefix="spiffe://")


def _dns_san(ctx: tls_pb2.UpstreamTlsContext) -> None:
    ctx.common_tls_context.validation_context.match_typed_subject_alt_names.add(
        san_type=common_pb2.SubjectAltNameMatcher.DNS, matcher=string_pb2.StringMatcher(exact="x")
    )


def _inline_cert(ctx: tls_pb2.UpstreamTlsContext) -> None:
    ctx.common_tls_context.tls_certificates.add().certificate_chain.inline_string = "PEM"


def _no_roots(ctx: tls_pb2.UpstreamTlsContext) -> None:
    ctx.common_tls_context.validation_context.ClearField("ca_certificate_provider_instance")


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (_other_instance, 'only has the certificate provider instance "default"'),
        (_prefix_san, r"only exact \(case-sensitive\) matchers"),
        (_dns_san, "only URI SANs"),
        (_inline_cert, "tls_certificates is not supported"),
        (_no_roots, "no ca_certificate_provider_instance"),
    ],
)
def test_upstream_tls_the_mesh_cannot_do_is_nacked(
    mutate: Callable[[tls_pb2.UpstreamTlsContext], None], reason: str
) -> None:
    ctx = upstream()
    mutate(ctx)
    with pytest.raises(XdsResourceError, match=reason):
        decode_cluster(cluster(ctx))


def manager(*filters: hcm_pb2.HttpFilter) -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager()
    hcm.route_config.name = "inbound"
    hcm.http_filters.extend(filters)
    hcm.http_filters.add(name="router", typed_config=pack(router_pb2.Router()))
    return hcm


def chain(hcm: hcm_pb2.HttpConnectionManager, tls: bool, protocol: str = "") -> lc_pb2.FilterChain:
    c = lc_pb2.FilterChain(filters=[lc_pb2.Filter(name="hcm", typed_config=pack(hcm))])
    c.filter_chain_match.transport_protocol = protocol
    if tls:
        down = tls_pb2.DownstreamTlsContext(common_tls_context=common())
        down.require_client_certificate.value = True
        c.transport_socket.CopyFrom(base_pb2.TransportSocket(name=TLS, typed_config=pack(down)))
    return c


def server(*chains: lc_pb2.FilterChain, inspector: bool = False) -> listener_pb2.Listener:
    lis = listener_pb2.Listener(
        name="grpc/server?xds.resource.listening_address=0.0.0.0:9000",
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="0.0.0.0", port_value=9000)
        ),
        filter_chains=list(chains),
    )
    if inspector:
        from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2

        lis.listener_filters.add(name="tls", typed_config=pack(tls_inspector_pb2.TlsInspector()))
    return lis


RBAC = Rbac(RbacAction.ALLOW, (("p", Policy((AnyRule(),), (AnyRule(),))),))
JWT = JwtAuthentication(
    (
        JwtProvider("a", "https://a", '{"keys": []}', ("aud",), (JwtHeader("x-jwt", "B "),)),
        JwtProvider("b", "https://b", '{"keys": []}', from_params=("t",), forward=True),
    )
)


def filters() -> list[hcm_pb2.HttpFilter]:
    return [
        hcm_pb2.HttpFilter(name="jwt", typed_config=pack(jwt_authentication_to_proto(JWT))),
        hcm_pb2.HttpFilter(name="rbac", typed_config=pack(rbac_filter_to_proto(RBAC))),
    ]


def test_server_listener_modes_and_policies() -> None:
    hcm = manager(*filters())
    strict = decode_listener(server(chain(hcm, True)))
    assert strict == InboundListener(
        name="grpc/server?xds.resource.listening_address=0.0.0.0:9000",
        address="0.0.0.0",
        port=9000,
        tls_mode=TlsMode.STRICT,
        rbac=(RBAC,),
        jwt=JWT,
    )
    assert isinstance(decode_listener(server(chain(manager(), False))), InboundListener)
    plain = decode_listener(server(chain(manager(), False)))
    assert isinstance(plain, InboundListener) and plain.tls_mode is TlsMode.DISABLE
    both = server(chain(hcm, True, "tls"), chain(hcm, False, "raw_buffer"), inspector=True)
    permissive = decode_listener(both)
    assert isinstance(permissive, InboundListener) and permissive.tls_mode is TlsMode.PERMISSIVE


def test_server_listeners_the_mesh_cannot_enforce_are_nacked() -> None:
    hcm = manager(*filters())
    fault = hcm_pb2.HttpFilter(name="fault", typed_config=pack(fault_pb2.HTTPFault()))
    cases = [
        (server(chain(hcm, True), chain(hcm, False)), "tls_inspector"),
        (server(chain(hcm, True), chain(manager(), True)), "http_filters differ"),
        (server(chain(manager(fault), True)), "HTTPFault is not supported"),
        (server(chain(manager(*reversed(filters())), True)), "jwt_authn must come once"),
        (server(), "no filter_chains"),
    ]
    not_mtls = chain(manager(), True)
    down = tls_pb2.DownstreamTlsContext(common_tls_context=common())
    not_mtls.transport_socket.typed_config.CopyFrom(pack(down))
    cases.append((server(not_mtls), "require_client_certificate must be true"))
    port_match = chain(manager(), False)
    port_match.filter_chain_match.destination_port.value = 9000
    cases.append((server(port_match), "destination_port is not supported"))
    for listener, reason in cases:
        with pytest.raises(XdsResourceError, match=reason):
            decode_listener(listener)


def test_jwt_filter_round_trips_and_refuses_other_layouts() -> None:
    assert jwt_authentication_from_proto(as_wire(jwt_authentication_to_proto(JWT))) == JWT
    same_issuer = JwtAuthentication((JWT.providers[0], JWT.providers[0]))
    proto = jwt_authentication_to_proto(same_issuer)
    assert sorted(proto.providers) == ["a", "a#1"]
    assert len(jwt_authentication_from_proto(as_wire(proto)).providers) == 2
    strict = jwt_authentication_to_proto(JWT)
    del strict.rules[0].requires.requires_any.requirements[-1]  # no allow_missing
    with pytest.raises(PolicyConfigError, match="allow_missing"):
        jwt_authentication_from_proto(as_wire(strict))
    remote = jwt_authentication_to_proto(JWT)
    remote.providers["a"].remote_jwks.http_uri.uri = "https://a/jwks"
    with pytest.raises(PolicyConfigError, match="remote_jwks"):
        jwt_authentication_from_proto(as_wire(remote))


def test_protocol_checks_the_side_a_listener_was_watched_for() -> None:
    protocol = AdsProtocol({"id": "n"})
    name = "grpc/server?xds.resource.listening_address=0.0.0.0:9000"
    protocol.watch([name], inbound=True)
    protocol.start_stream()
    from envoy.service.discovery.v3 import discovery_pb2

    lds = "type.googleapis.com/envoy.config.listener.v3.Listener"
    good = discovery_pb2.DiscoveryResponse(type_url=lds, version_info="1", nonce="a")
    good.resources.append(pack(server(chain(manager(), True))))
    outcome = protocol.handle_response(good)
    assert not outcome.rejected and outcome.changed
    assert protocol.state.inbound[name].tls_mode is TlsMode.STRICT
    assert name not in protocol.state.listeners
    protocol.watch([name])  # now as a client listener: the same resource is refused
    again = discovery_pb2.DiscoveryResponse(type_url=lds, version_info="2", nonce="b")
    again.resources.append(pack(server(chain(manager(), True))))
    assert "no api_listener" in protocol.handle_response(again).rejected[name]
