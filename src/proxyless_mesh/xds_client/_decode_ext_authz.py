"""The ext_authz HTTP filter -> `ExtAuthz`, in the form istiod writes it for an
AuthorizationPolicy CUSTOM provider (the control plane's
`translate.ext_authz_protos`): enabled only by the preceding RBAC filter's
`istio_ext_authz_` shadow rules, an http_service or an envoy_grpc service on
an `outbound|<port>||<host>` cluster. Anything the library would not honour
(a request body, header mutations, other enabling) is NACKed by field.
"""

from __future__ import annotations

from typing import Any

from proxyless_mesh.errors import UnsupportedPolicyError
from proxyless_mesh.model import ExtAuthz
from proxyless_mesh.xds_client._decode_policies import seconds
from proxyless_mesh.xds_client._message import is_set

EXT_AUTHZ_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
EXT_AUTHZ_STAT_PREFIX = "istio_ext_authz_"
_UNSUPPORTED = (
    "with_request_body",
    "filter_enabled",
    "deny_at_disable",
    "disallowed_headers",
    "decoder_header_mutation_rules",
    "failure_mode_allow_header_add",
)


def ext_authz_from_proto(msg: Any) -> ExtAuthz:
    """`msg`: an ExtAuthz (a `_wire` message)."""
    where = "ExtAuthz"
    for field in _UNSUPPORTED:
        if is_set(msg, field):
            raise UnsupportedPolicyError(f"{where}.{field}", "is not supported")
    enabled = msg.filter_enabled_metadata
    keys = [p.key for p in enabled.path]
    if keys != [f"{EXT_AUTHZ_STAT_PREFIX}shadow_effective_policy_id"]:
        raise UnsupportedPolicyError(
            f"{where}.filter_enabled_metadata",
            "only Istio's form (enabled by the istio_ext_authz_ shadow rules) is supported",
        )
    common: dict[str, Any] = {
        "fail_open": msg.failure_mode_allow,
        "status_on_error": int(msg.status_on_error.code) or 403,
    }
    if msg.HasField("grpc_service"):
        grpc = msg.grpc_service
        cluster = grpc.envoy_grpc.cluster_name
        timeout = (
            seconds(grpc.timeout, f"{where}.grpc_service.timeout")
            if grpc.HasField("timeout")
            else 0.2
        )
        return ExtAuthz(_target(cluster, where), grpc=True, timeout=timeout, **common)
    if not msg.HasField("http_service"):
        raise UnsupportedPolicyError(where, "needs an http_service or a grpc_service")
    service = msg.http_service
    uri = service.server_uri
    response = service.authorization_response
    return ExtAuthz(
        _target(uri.cluster, where),
        timeout=seconds(uri.timeout, f"{where}.http_service.server_uri.timeout"),
        path_prefix=service.path_prefix,
        allowed_headers=_names(msg.allowed_headers) if msg.HasField("allowed_headers") else None,
        upstream_headers=_names(response.allowed_upstream_headers),
        client_headers=_names(response.allowed_client_headers),
        **common,
    )


def _target(cluster: str, where: str) -> str:
    """`outbound|<port>||<host>` -> `host:port`."""
    parts = cluster.split("|")
    if len(parts) != 4 or parts[0] != "outbound" or not parts[1].isdigit() or parts[2]:
        raise UnsupportedPolicyError(f"{where}.cluster", f"{cluster!r} is not a service's cluster")
    return f"{parts[3]}:{parts[1]}"


def _names(matchers: Any) -> tuple[str, ...]:
    names = []
    for m in matchers.patterns:
        if m.WhichOneof("match_pattern") != "exact":
            raise UnsupportedPolicyError(
                "ExtAuthz headers", "only exact header names are supported"
            )
        names.append(m.exact.lower())
    return tuple(names)
