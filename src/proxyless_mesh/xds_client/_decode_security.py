"""TLS transport sockets (gRFC A29 form) -> the model's security intent.

The mesh takes its certificates from one place, the certificate provider
instance "default" of the bootstrap (the library's IdentityManager): the
identity certificate "default" and the roots "ROOTCA". A TLS context naming
anything else (another instance, inline or SDS certificates, system roots), or
checking peers by something other than exact URI SANs, asks for what the mesh
cannot do and is NACKed rather than half-applied.
"""

from __future__ import annotations

from typing import Any

from proxyless_mesh.errors import XdsResourceError
from proxyless_mesh.model import OriginationTls, UpstreamTls
from proxyless_mesh.xds_client._message import is_set, unpack_any

__all__ = ["TLS_SOCKET_TYPES", "decode_downstream_tls", "decode_upstream_tls"]

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
PROVIDER_INSTANCE = "default"
_PREFIX = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
UPSTREAM_TLS_TYPE_URL = _PREFIX + "UpstreamTlsContext"
DOWNSTREAM_TLS_TYPE_URL = _PREFIX + "DownstreamTlsContext"
TLS_SOCKET_TYPES = (UPSTREAM_TLS_TYPE_URL, DOWNSTREAM_TLS_TYPE_URL)
_URI_SAN = 3  # SubjectAltNameMatcher.URI
_NAME_SANS = (2, _URI_SAN)  # DNS, URI
_VERIFY_TRUST_CHAIN = 0  # CertificateValidationContext.VERIFY_TRUST_CHAIN


def decode_upstream_tls(cluster: Any) -> UpstreamTls | None:
    """The cluster's `transport_socket` -> UpstreamTls; None without one."""
    if not cluster.HasField("transport_socket"):
        return None
    where = "transport_socket"
    ctx = _unpack(cluster.transport_socket, UPSTREAM_TLS_TYPE_URL, where)
    where += ".UpstreamTlsContext"
    if ctx.allow_renegotiation or ctx.HasField("max_session_keys"):
        raise XdsResourceError(f"{where}: session renegotiation settings are not supported")
    common = ctx.common_tls_context
    if not (
        common.HasField("tls_certificate_provider_instance")
        or common.HasField("tls_certificate_certificate_provider_instance")
    ):
        origination = _origination(common, f"{where}.common_tls_context")
        return UpstreamTls(sni=ctx.sni, origination=origination)
    ids = _common_context(common, f"{where}.common_tls_context")
    return UpstreamTls(expected_spiffe_ids=ids, sni=ctx.sni)


def _origination(ctx: Any, where: str) -> OriginationTls:
    """TLS origination (DestinationRule SIMPLE/MUTUAL): certificates and the
    CA as file names, SANs as exact DNS or URI matchers; anything else is NACKed."""
    for field in (
        "tls_certificate_sds_secret_configs",
        "validation_context_sds_secret_config",
        "combined_validation_context",
        "validation_context_certificate_provider_instance",
        "custom_handshaker",
        "custom_tls_certificate_selector",
    ):
        if is_set(ctx, field):
            raise XdsResourceError(f"{where}.{field} is not supported")
    cert_file = key_file = ""
    if len(ctx.tls_certificates) > 1:
        raise XdsResourceError(f"{where}.tls_certificates: at most one certificate")
    for certificate in ctx.tls_certificates:
        cert_file = _filename(certificate.certificate_chain, f"{where}.tls_certificates[0]")
        key_file = _filename(certificate.private_key, f"{where}.tls_certificates[0]")
    validation = ctx.validation_context
    here = f"{where}.validation_context"
    for field in ("watched_directory", "verify_certificate_spki", "verify_certificate_hash"):
        if is_set(validation, field):
            raise XdsResourceError(f"{here}.{field} is not supported")
    ca_file = ""  # with system_root_certs, or nothing: the system's roots
    if validation.HasField("trusted_ca"):
        ca_file = _filename(validation.trusted_ca, f"{here}.trusted_ca")
    names: list[str] = []
    for i, typed in enumerate(validation.match_typed_subject_alt_names):
        matcher = typed.matcher
        if typed.san_type not in _NAME_SANS or matcher.WhichOneof("match_pattern") != "exact":
            raise XdsResourceError(
                f"{here}.match_typed_subject_alt_names[{i}]: only exact DNS or URI names"
            )
        names.append(str(matcher.exact))
    return OriginationTls(ca_file, cert_file, key_file, tuple(names))


def _filename(source: Any, where: str) -> str:
    if source.WhichOneof("specifier") != "filename":
        raise XdsResourceError(f"{where}: only certificates given as file names are supported")
    return str(source.filename)


def decode_downstream_tls(socket: Any, where: str) -> bool:
    """A filter chain's DownstreamTlsContext: True when it requires (and checks)
    a client certificate, which is the only server-side TLS the mesh does."""
    ctx = _unpack(socket, DOWNSTREAM_TLS_TYPE_URL, where)
    where += ".DownstreamTlsContext"
    if ctx.HasField("require_sni") and ctx.require_sni.value:
        raise XdsResourceError(f"{where}.require_sni is not supported")
    ids = _common_context(ctx.common_tls_context, f"{where}.common_tls_context")
    if ids:
        raise XdsResourceError(
            f"{where}: SAN matchers on a server are not supported (authorize callers with RBAC)"
        )
    if not (ctx.HasField("require_client_certificate") and ctx.require_client_certificate.value):
        raise XdsResourceError(
            f"{where}.require_client_certificate must be true: the mesh serves mutual TLS only"
        )
    return True


def _unpack(socket: Any, type_url: str, where: str) -> Any:
    if socket.name and socket.name != TLS_TRANSPORT_SOCKET:
        raise XdsResourceError(f"{where}: transport socket {socket.name!r} is not supported")
    config = socket.typed_config
    if config.type_url != type_url:
        raise XdsResourceError(f"{where}: expected {type_url!r}, got {config.type_url!r}")
    return unpack_any(config, type_url.rsplit("/", 1)[-1], where)


def _common_context(ctx: Any, where: str) -> tuple[str, ...]:
    """Check the certificates come from the "default" instance; returns the
    SPIFFE IDs the peer must present (empty: any the roots vouch for)."""
    unsupported = (
        "tls_certificates",
        "tls_certificate_sds_secret_configs",
        "validation_context_sds_secret_config",
        "combined_validation_context",
        "tls_certificate_certificate_provider",
        "validation_context_certificate_provider",
        "custom_handshaker",
        "custom_tls_certificate_selector",
    )
    for field in unsupported:
        if is_set(ctx, field):
            raise XdsResourceError(f"{where}.{field} is not supported")
    identity = ctx.tls_certificate_provider_instance
    if not ctx.HasField("tls_certificate_provider_instance"):
        identity = ctx.tls_certificate_certificate_provider_instance  # the deprecated name
    if not identity.instance_name:
        raise XdsResourceError(f"{where}: no tls_certificate_provider_instance")
    _check_instance(identity, f"{where}.tls_certificate_provider_instance")
    if ctx.HasField("validation_context_certificate_provider_instance"):
        roots = ctx.validation_context_certificate_provider_instance
        validation = None
    else:
        validation = ctx.validation_context
        roots = validation.ca_certificate_provider_instance
    if not roots.instance_name:
        raise XdsResourceError(f"{where}: no ca_certificate_provider_instance for the roots")
    _check_instance(roots, f"{where}.validation_context.ca_certificate_provider_instance")
    return _spiffe_ids(validation, f"{where}.validation_context") if validation else ()


def _check_instance(instance: Any, where: str) -> None:
    if instance.instance_name != PROVIDER_INSTANCE:
        raise XdsResourceError(
            f"{where}.instance_name {instance.instance_name!r}: the mesh only has "
            f'the certificate provider instance "{PROVIDER_INSTANCE}"'
        )


def _spiffe_ids(validation: Any, where: str) -> tuple[str, ...]:
    for field in (
        "trusted_ca",
        "watched_directory",
        "verify_certificate_spki",
        "verify_certificate_hash",
        "crl",
        "custom_validator_config",
        "system_root_certs",
    ):
        if is_set(validation, field):
            raise XdsResourceError(f"{where}.{field} is not supported")
    if validation.allow_expired_certificate:
        raise XdsResourceError(f"{where}.allow_expired_certificate is not supported")
    if validation.trust_chain_verification != _VERIFY_TRUST_CHAIN:
        raise XdsResourceError(f"{where}.trust_chain_verification must be VERIFY_TRUST_CHAIN")
    ids: list[str] = []
    for i, m in enumerate(validation.match_subject_alt_names):
        ids.append(_exact_spiffe(m, f"{where}.match_subject_alt_names[{i}]"))
    for i, typed in enumerate(validation.match_typed_subject_alt_names):
        here = f"{where}.match_typed_subject_alt_names[{i}]"
        if typed.san_type != _URI_SAN:
            raise XdsResourceError(f"{here}.san_type: only URI SANs (SPIFFE IDs) are supported")
        ids.append(_exact_spiffe(typed.matcher, f"{here}.matcher"))
    return tuple(dict.fromkeys(ids))


def _exact_spiffe(matcher: Any, where: str) -> str:
    if matcher.WhichOneof("match_pattern") != "exact" or matcher.ignore_case:
        raise XdsResourceError(f"{where}: only exact (case-sensitive) matchers are supported")
    if not matcher.exact.startswith("spiffe://"):
        raise XdsResourceError(f"{where}: {matcher.exact!r} is not a SPIFFE ID")
    return str(matcher.exact)
