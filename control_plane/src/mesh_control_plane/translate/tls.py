"""Mutual TLS on the wire: the gRFC A29 form that grpcio's own xDS understands.

Certificates are never in xDS. Both sides name the certificate provider
instance "default" of the client's bootstrap (grpcio: a `file_watcher` over the
files the library keeps; the library: its IdentityManager): certificate
"default" is the workload's chain and key, "ROOTCA" the mesh roots.

Upstream (CDS) - which clusters get mTLS:
- DestinationRule `tls.mode` ISTIO_MUTUAL: mTLS, always; DISABLE: plaintext.
  The most specific setting wins (subset port > subset > rule port > rule).
- No `tls` anywhere (Istio's auto mTLS): mTLS when the service is
  MESH_INTERNAL and every instance of the cluster declares a
  `serviceAccount`, i.e. every instance is a mesh workload holding an identity
  (Istio asks the same of endpoints: "has a sidecar"). Otherwise plaintext:
  a cluster has one transport socket, and gRPC has no per-endpoint
  `transport_socket_matches`, so a mix of mesh and non-mesh instances stays
  plaintext rather than failing the handshakes with the non-mesh ones.
- The peer must present one of the SPIFFE IDs of the cluster's instances,
  `spiffe://<trust domain>/ns/<ServiceEntry namespace>/sa/<serviceAccount>`
  (exact `match_subject_alt_names`; none known: any identity the roots vouch for).
- A bare Envoy gets no upstream mesh TLS: Envoy 1.40 has no "default"
  certificate provider instance. Envoys run by an agent (gateways, sidecars)
  get the same identities with SDS certificates instead (sds.py).
- DestinationRule SIMPLE / MUTUAL (TLS origination, `origination_socket`) is
  the same for every client: the operator's files, SNI and names.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from mesh_control_plane.config.model import ClientTls, MeshSettings, WorkloadEndpoint
from mesh_control_plane.registry.static import Registry
from mesh_control_plane.translate.clusters import ClusterSpec
from mesh_control_plane.translate.protos import pack

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
PROVIDER_INSTANCE = "default"
IDENTITY_CERTIFICATE = "default"
ROOT_CERTIFICATE = "ROOTCA"
ORIGINATION_MODES = ("SIMPLE", "MUTUAL")
DNS_SAN = common_pb2.SubjectAltNameMatcher.DNS


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def cluster_instances(spec: ClusterSpec, registry: Registry) -> list[WorkloadEndpoint]:
    """The instances behind one cluster (its subset's, when it has one)."""
    labels = spec.subset.labels if spec.subset else {}
    return [
        instance
        for instance in registry.get(spec.service.host, ())
        if all(instance.labels.get(key) == value for key, value in labels.items())
    ]


def upstream_identities(
    spec: ClusterSpec, registry: Registry, settings: MeshSettings
) -> tuple[str, ...] | None:
    """The SPIFFE IDs to expect from the cluster's servers, or None for plaintext."""
    tls = spec.policy.tls
    instances = cluster_instances(spec, registry)
    if tls is None:
        auto = (
            spec.service.location == "MESH_INTERNAL"
            and bool(instances)
            and all(i.service_account for i in instances)
        )
        if not auto:
            return None
    elif tls.mode != "ISTIO_MUTUAL":  # DISABLE, or origination (origination_socket)
        return None
    accounts = sorted({i.service_account for i in instances if i.service_account})
    namespace = spec.service.namespace
    return tuple(spiffe_id(settings.trust_domain, namespace, sa) for sa in accounts)


def upstream_sni(spec: ClusterSpec) -> str:
    tls = spec.policy.tls
    return tls.sni if tls is not None and tls.sni else spec.service.host


def upstream_transport_socket(spiffe_ids: Iterable[str], sni: str) -> base_pb2.TransportSocket:
    """UpstreamTlsContext: present the workload certificate, trust the mesh
    roots, accept only `spiffe_ids` (exact URI SANs)."""
    context = _common_context()
    context.validation_context.match_subject_alt_names.extend(
        string_pb2.StringMatcher(exact=sid) for sid in spiffe_ids
    )
    upstream = tls_pb2.UpstreamTlsContext(common_tls_context=context, sni=sni)
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(upstream))


def origination_socket(tls: ClientTls, sni: str) -> base_pb2.TransportSocket:
    """DestinationRule SIMPLE / MUTUAL: the operator's CA and client
    certificate as file names (read where the client runs: the library or
    Envoy), SNI, and the names the server's certificate must carry: the
    rule's subjectAltNames, else the SNI name (Istio's default check)."""
    context = tls_pb2.CommonTlsContext()
    if tls.ca_certificates:
        context.validation_context.trusted_ca.filename = tls.ca_certificates
    else:  # Istio's default: the system's roots
        context.validation_context.system_root_certs.SetInParent()
    for name in tls.subject_alt_names or (sni,):
        kind = common_pb2.SubjectAltNameMatcher.URI if "://" in name else DNS_SAN
        context.validation_context.match_typed_subject_alt_names.add(
            san_type=kind, matcher=string_pb2.StringMatcher(exact=name)
        )
    if tls.mode == "MUTUAL" and tls.client_certificate:  # (credentialName only: gateways)
        certificate = context.tls_certificates.add()
        certificate.certificate_chain.filename = tls.client_certificate
        certificate.private_key.filename = tls.private_key
    upstream = tls_pb2.UpstreamTlsContext(common_tls_context=context, sni=sni)
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(upstream))


def downstream_transport_socket() -> base_pb2.TransportSocket:
    """DownstreamTlsContext demanding a client certificate signed by the mesh
    roots; which identities may call is the RBAC filters' business."""
    downstream = tls_pb2.DownstreamTlsContext(common_tls_context=_common_context())
    downstream.require_client_certificate.value = True
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(downstream))


def _common_context() -> tls_pb2.CommonTlsContext:
    context = tls_pb2.CommonTlsContext()
    context.tls_certificate_provider_instance.CopyFrom(
        common_pb2.CertificateProviderPluginInstance(
            instance_name=PROVIDER_INSTANCE, certificate_name=IDENTITY_CERTIFICATE
        )
    )
    context.validation_context.ca_certificate_provider_instance.CopyFrom(
        common_pb2.CertificateProviderPluginInstance(
            instance_name=PROVIDER_INSTANCE, certificate_name=ROOT_CERTIFICATE
        )
    )
    return context
