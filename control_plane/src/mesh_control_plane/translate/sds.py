"""TLS for Envoy gateways: certificates by SDS name, never in xDS.

As in Istio, the gateway's agent (``meshctl gateway run``) holds the keys and
serves them to its Envoy over a local socket, the bootstrap's static cluster
``sds-grpc``: ``default`` is the gateway's workload certificate from our CA,
``ROOTCA`` the mesh roots, ``kubernetes://<credentialName>`` an HTTPS server
certificate (and ``kubernetes://<credentialName>-cacert`` the client CA of a
MUTUAL server). The control plane only names them, so a rotated certificate
reaches Envoy by SDS without a listener or cluster changing.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from mesh_control_plane.config.model import ClientTls
from mesh_control_plane.translate.protos import pack
from mesh_control_plane.translate.tls import (
    DNS_SAN,
    IDENTITY_CERTIFICATE,
    ROOT_CERTIFICATE,
    TLS_TRANSPORT_SOCKET,
)

SDS_CLUSTER = "sds-grpc"
"""The agent's SDS server in a gateway's bootstrap (Istio's name)."""
CREDENTIAL_PREFIX = "kubernetes://"
CACERT_SUFFIX = "-cacert"
DOWNSTREAM_ALPN = ("h2", "http/1.1")


def credential_secret(credential_name: str) -> str:
    return f"{CREDENTIAL_PREFIX}{credential_name}"


def _secret(name: str) -> secret_pb2.SdsSecretConfig:
    source = config_source_pb2.ConfigSource(resource_api_version=config_source_pb2.V3)
    api = source.api_config_source
    api.api_type = config_source_pb2.ApiConfigSource.GRPC
    api.transport_api_version = config_source_pb2.V3
    api.grpc_services.append(
        grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=SDS_CLUSTER)
        )
    )
    return secret_pb2.SdsSecretConfig(name=name, sds_config=source)


def _validation(
    root_secret: str, spiffe_ids: Iterable[str] = ()
) -> tls_pb2.CommonTlsContext.CombinedCertificateValidationContext:
    combined = tls_pb2.CommonTlsContext.CombinedCertificateValidationContext()
    combined.validation_context_sds_secret_config.CopyFrom(_secret(root_secret))
    combined.default_validation_context.match_typed_subject_alt_names.extend(
        common_pb2.SubjectAltNameMatcher(
            san_type=common_pb2.SubjectAltNameMatcher.URI,
            matcher=string_pb2.StringMatcher(exact=sid),
        )
        for sid in spiffe_ids
    )
    return combined


def gateway_upstream_socket(spiffe_ids: Iterable[str], sni: str) -> base_pb2.TransportSocket:
    """ISTIO_MUTUAL from the gateway: its workload certificate, the mesh
    roots, and only the cluster's SPIFFE IDs accepted (none known: any)."""
    context = tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[_secret(IDENTITY_CERTIFICATE)],
        combined_validation_context=_validation(ROOT_CERTIFICATE, spiffe_ids),
    )
    upstream = tls_pb2.UpstreamTlsContext(common_tls_context=context, sni=sni)
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(upstream))


def gateway_downstream_socket(mode: str, credential_name: str) -> base_pb2.TransportSocket:
    """An HTTPS server's TLS: SIMPLE, MUTUAL and OPTIONAL_MUTUAL present the
    credential's certificate (MUTUAL also demands a client certificate signed
    by its ``-cacert``; OPTIONAL_MUTUAL asks for one and verifies it when the
    client presents one, Istio's meaning); ISTIO_MUTUAL presents the workload
    certificate and demands a mesh one."""
    if mode == "ISTIO_MUTUAL":
        certificate, roots = IDENTITY_CERTIFICATE, ROOT_CERTIFICATE
    else:
        certificate = credential_secret(credential_name)
        roots = certificate + CACERT_SUFFIX if mode in ("MUTUAL", "OPTIONAL_MUTUAL") else ""
    context = tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[_secret(certificate)],
        alpn_protocols=DOWNSTREAM_ALPN,
    )
    downstream = tls_pb2.DownstreamTlsContext(common_tls_context=context)
    if roots:  # (the constructor copied `context`: change the copy)
        downstream.common_tls_context.combined_validation_context.CopyFrom(_validation(roots))
        downstream.require_client_certificate.value = mode != "OPTIONAL_MUTUAL"
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(downstream))


def gateway_origination_socket(tls: ClientTls, sni: str) -> base_pb2.TransportSocket:
    """DestinationRule SIMPLE/MUTUAL with credentialName at a gateway (Istio's
    egress TLS origination): the server checked against the credential's
    ``-cacert`` and the rule's subjectAltNames (else the SNI name); MUTUAL
    presents the credential's certificate."""
    certificate = credential_secret(tls.credential_name)
    combined = _validation(certificate + CACERT_SUFFIX)
    for name in tls.subject_alt_names or (sni,):
        kind = common_pb2.SubjectAltNameMatcher.URI if "://" in name else DNS_SAN
        combined.default_validation_context.match_typed_subject_alt_names.add(
            san_type=kind, matcher=string_pb2.StringMatcher(exact=name)
        )
    context = tls_pb2.CommonTlsContext(combined_validation_context=combined)
    if tls.mode == "MUTUAL":
        context.tls_certificate_sds_secret_configs.append(_secret(certificate))
    upstream = tls_pb2.UpstreamTlsContext(common_tls_context=context, sni=sni)
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(upstream))
