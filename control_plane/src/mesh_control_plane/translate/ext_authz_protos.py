"""An AuthorizationPolicy CUSTOM engine -> the two HTTP filters istiod emits
for it: an RBAC filter with only `shadow_rules` (stat prefix
`istio_ext_authz_`, rules named `istio-ext-authz-...`), which decides nothing
and marks the requests a CUSTOM rule matches, then the ext_authz filter,
enabled by that mark (`filter_enabled_metadata`), calling the provider's
outbound cluster. The library's decoder reads the pair back as one engine;
Envoy sidecars run them as they are. On a sidecar's TCP port the same pair as
network filters (a gRPC provider only: Istio asks it once per connection).
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as network_ext_authz_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.type.matcher.v3 import string_pb2

from mesh_control_plane.translate.protos import duration, pack
from mesh_control_plane.translate.rbac_protos import RBAC_FILTER_NAME, rbac_to_proto
from proxyless_mesh.model import ExtAuthz, Rbac

EXT_AUTHZ_FILTER_NAME = "envoy.filters.http.ext_authz"
EXT_AUTHZ_STAT_PREFIX = "istio_ext_authz_"
EXT_AUTHZ_POLICY_PREFIX = "istio-ext-authz"
NETWORK_EXT_AUTHZ_FILTER_NAME = "envoy.filters.network.ext_authz"
NETWORK_RBAC_FILTER_NAME = "envoy.filters.network.rbac"


def ext_authz_filters(engine: Rbac) -> list[hcm_pb2.HttpFilter]:
    """The marking RBAC filter and the ext_authz filter of a CUSTOM engine."""
    assert engine.ext_authz is not None
    marking = http_rbac_pb2.RBAC(
        shadow_rules=rbac_to_proto(engine), shadow_rules_stat_prefix=EXT_AUTHZ_STAT_PREFIX
    )
    return [
        hcm_pb2.HttpFilter(name=f"{RBAC_FILTER_NAME}.ext_authz", typed_config=pack(marking)),
        hcm_pb2.HttpFilter(
            name=EXT_AUTHZ_FILTER_NAME, typed_config=pack(ext_authz_to_proto(engine.ext_authz))
        ),
    ]


def network_ext_authz_filters(engine: Rbac, stat_prefix: str) -> list[lc_pb2.Filter]:
    """The marking network RBAC filter and the network ext_authz filter of a
    CUSTOM engine with a gRPC provider (asked once, at the first bytes)."""
    assert engine.ext_authz is not None and engine.ext_authz.grpc
    config = engine.ext_authz
    marking = network_rbac_pb2.RBAC(
        stat_prefix=stat_prefix,
        shadow_rules=rbac_to_proto(engine),
        shadow_rules_stat_prefix=EXT_AUTHZ_STAT_PREFIX,
    )
    check = network_ext_authz_pb2.ExtAuthz(
        stat_prefix=stat_prefix,
        failure_mode_allow=config.fail_open,
        transport_api_version=config_source_pb2.ApiVersion.V3,
    )
    _grpc_service(check.grpc_service, config)
    _enabled_by_mark(check.filter_enabled_metadata, NETWORK_RBAC_FILTER_NAME)
    return [
        lc_pb2.Filter(name=f"{NETWORK_RBAC_FILTER_NAME}.ext_authz", typed_config=pack(marking)),
        lc_pb2.Filter(name=NETWORK_EXT_AUTHZ_FILTER_NAME, typed_config=pack(check)),
    ]


def _enabled_by_mark(enabled: Any, rbac_filter: str) -> None:
    """Enabled when the marking RBAC filter's shadow rules matched a CUSTOM rule."""
    enabled.filter = rbac_filter
    enabled.path.add(key=f"{EXT_AUTHZ_STAT_PREFIX}shadow_effective_policy_id")
    enabled.value.string_match.prefix = EXT_AUTHZ_POLICY_PREFIX


def _grpc_service(service: Any, config: ExtAuthz) -> None:
    service.envoy_grpc.cluster_name = config.cluster
    service.envoy_grpc.authority = config.target.rpartition(":")[0]
    service.timeout.CopyFrom(duration(config.timeout))


def ext_authz_to_proto(config: ExtAuthz) -> ext_authz_pb2.ExtAuthz:
    out = ext_authz_pb2.ExtAuthz(
        transport_api_version=config_source_pb2.ApiVersion.V3,
        failure_mode_allow=config.fail_open,
    )
    out.status_on_error.code = config.status_on_error  # type: ignore[assignment]
    _enabled_by_mark(out.filter_enabled_metadata, RBAC_FILTER_NAME)
    if config.grpc:
        _grpc_service(out.grpc_service, config)
        return out
    service = out.http_service
    service.server_uri.uri = f"http://{config.target}"
    service.server_uri.cluster = config.cluster
    service.server_uri.timeout.CopyFrom(duration(config.timeout))
    service.path_prefix = config.path_prefix
    # Envoy refuses an empty ListStringMatcher: an empty list is not sent, and
    # "only the defaults" is said by naming one of them (Host is always sent).
    if config.allowed_headers is not None:
        out.allowed_headers.patterns.extend(_exact(config.allowed_headers or ("host",)))
    response = service.authorization_response
    if config.upstream_headers:
        response.allowed_upstream_headers.patterns.extend(_exact(config.upstream_headers))
    if config.client_headers:
        response.allowed_client_headers.patterns.extend(_exact(config.client_headers))
    return out


def _exact(names: tuple[str, ...]) -> list[string_pb2.StringMatcher]:
    return [string_pb2.StringMatcher(exact=n, ignore_case=True) for n in names]
