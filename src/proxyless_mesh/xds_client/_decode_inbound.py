"""Server-side (inbound) Listener -> `InboundListener`.

What a workload's server enforces on one address (gRFC A36's server
listener): the mTLS mode from the filter chains (a chain with a
DownstreamTlsContext requiring client certificates is mTLS, one without a
transport socket is plaintext: all mTLS is STRICT, all plaintext DISABLE, both
PERMISSIVE, told apart by `filter_chain_match.transport_protocol` "tls" /
"raw_buffer"), and from the HttpConnectionManager the jwt_authn filter
(request authentication) and the RBAC filters, in order. The model holds one
policy per listener, so every chain must carry the same HTTP filters.
Anything else the mesh would silently not enforce is NACKed.
"""

from __future__ import annotations

from typing import Any

from proxyless_mesh.errors import PolicyConfigError, XdsResourceError
from proxyless_mesh.model import InboundListener, JwtAuthentication, Rbac, RbacAction, TlsMode
from proxyless_mesh.xds_client._decode_ext_authz import (
    EXT_AUTHZ_STAT_PREFIX,
    EXT_AUTHZ_TYPE_URL,
    ext_authz_from_proto,
)
from proxyless_mesh.xds_client._decode_rbac import (
    jwt_authentication_from_proto,
    rbac_filter_from_proto,
)
from proxyless_mesh.xds_client._decode_security import decode_downstream_tls
from proxyless_mesh.xds_client._message import is_set, unpack_any
from proxyless_mesh.xds_client._types import HCM_TYPE_URL, ROUTER_TYPE_URL

__all__ = ["decode_inbound_listener"]

_FILTERS = "type.googleapis.com/envoy.extensions.filters."
RBAC_TYPE_URL = _FILTERS + "http.rbac.v3.RBAC"
JWT_TYPE_URL = _FILTERS + "http.jwt_authn.v3.JwtAuthentication"
TLS_INSPECTOR_TYPE_URL = _FILTERS + "listener.tls_inspector.v3.TlsInspector"
_UNESCAPE_AND_FORWARD = 4  # HttpConnectionManager.PathWithEscapedSlashesAction
_MATCH_FIELDS_UNSUPPORTED = (
    "destination_port",
    "prefix_ranges",
    "address_suffix",
    "suffix_len",
    "direct_source_prefix_ranges",
    "source_prefix_ranges",
    "source_ports",
    "server_names",
    "application_protocols",
)


def decode_inbound_listener(msg: Any) -> InboundListener:
    """A Listener without api_listener (already unpacked), as a server's."""
    if not msg.name:
        raise XdsResourceError("Listener has no name")
    sa = msg.address.socket_address
    if msg.address.WhichOneof("address") != "socket_address" or not sa.address:
        raise XdsResourceError("server Listener needs address.socket_address (gRFC A36)")
    if sa.WhichOneof("port_specifier") != "port_value" or not 0 < sa.port_value <= 65535:
        raise XdsResourceError("server Listener needs a port_value in 1..65535")
    for i, lf in enumerate(msg.listener_filters):
        if lf.typed_config.type_url != TLS_INSPECTOR_TYPE_URL:
            raise XdsResourceError(
                f"listener_filters[{i}] {lf.name!r}: only the tls_inspector is supported"
            )
    chains = list(msg.filter_chains)
    if msg.HasField("default_filter_chain"):
        chains.append(msg.default_filter_chain)
    if not chains:
        raise XdsResourceError("server Listener has no filter_chains")
    modes: set[bool] = set()
    filters: bytes | None = None
    manager: Any = None
    for i, chain in enumerate(chains):
        where = f"filter_chains[{i}]"
        modes.add(_chain_is_tls(chain, where))
        current = _connection_manager(chain, where)
        serialized = b"".join(f.SerializeToString(deterministic=True) for f in current.http_filters)
        if filters is None:
            filters, manager = serialized, current
        elif serialized != filters:
            raise XdsResourceError(
                f"{where}: http_filters differ from filter_chains[0]'s; the mesh enforces "
                "one policy per listener"
            )
    if modes == {True, False} and not msg.listener_filters:
        raise XdsResourceError(
            "TLS and plaintext filter chains need the tls_inspector listener filter"
        )
    mode = (
        TlsMode.PERMISSIVE
        if len(modes) == 2
        else (TlsMode.STRICT if True in modes else TlsMode.DISABLE)
    )
    rbac, jwt = _http_filters(manager)
    return InboundListener(
        name=msg.name,
        address=sa.address,
        port=sa.port_value,
        tls_mode=mode,
        rbac=rbac,
        jwt=jwt,
        path_normalization=_path_normalization(manager),
    )


def _path_normalization(manager: Any) -> str:
    """Istio's pathNormalization from the HCM's fields. Never weaker than BASE:
    the library always normalizes before it authorizes."""
    decode = manager.path_with_escaped_slashes_action == _UNESCAPE_AND_FORWARD
    if decode:
        return "DECODE_AND_MERGE_SLASHES"
    return "MERGE_SLASHES" if manager.merge_slashes else "BASE"


def _chain_is_tls(chain: Any, where: str) -> bool:
    match = chain.filter_chain_match
    for field in _MATCH_FIELDS_UNSUPPORTED:
        if is_set(match, field):
            raise XdsResourceError(f"{where}.filter_chain_match.{field} is not supported")
    if match.source_type:
        raise XdsResourceError(f"{where}.filter_chain_match.source_type is not supported")
    tls = bool(chain.HasField("transport_socket"))
    if tls:
        decode_downstream_tls(chain.transport_socket, f"{where}.transport_socket")
    expected = "tls" if tls else "raw_buffer"
    if match.transport_protocol not in ("", expected):
        raise XdsResourceError(
            f"{where}.filter_chain_match.transport_protocol {match.transport_protocol!r} "
            f"does not fit a {'TLS' if tls else 'plaintext'} chain (expected {expected!r})"
        )
    return tls


def _connection_manager(chain: Any, where: str) -> Any:
    if len(chain.filters) != 1:
        raise XdsResourceError(f"{where}: expected exactly one filter, the HttpConnectionManager")
    config = chain.filters[0].typed_config
    if config.type_url != HCM_TYPE_URL:
        raise XdsResourceError(f"{where}.filters[0]: expected an HttpConnectionManager")
    manager = _unpack(config, f"{where}.filters[0]")
    if manager.WhichOneof("route_specifier") != "route_config":
        raise XdsResourceError(f"{where}: the server's HttpConnectionManager needs route_config")
    return manager


def _http_filters(
    manager: Any,
) -> tuple[tuple[Rbac, ...], JwtAuthentication | None]:
    """jwt_authn (at most one, before any RBAC), RBAC engines in order, router last."""
    filters = list(manager.http_filters)
    if not filters or filters[-1].typed_config.type_url != ROUTER_TYPE_URL:
        raise XdsResourceError("the last http filter must be the router")
    engines: list[Rbac] = []
    jwt: JwtAuthentication | None = None
    marking: Rbac | None = None  # the CUSTOM rules, waiting for their ext_authz filter
    for i, f in enumerate(filters[:-1]):
        where = f"http_filters[{i}] {f.name!r}"
        url = f.typed_config.type_url
        try:
            if marking is not None and url != EXT_AUTHZ_TYPE_URL:
                raise XdsResourceError(f"{where}: the istio_ext_authz_ rules need ext_authz next")
            if url == RBAC_TYPE_URL:
                rbac = _unpack(f.typed_config, where)
                if rbac.shadow_rules_stat_prefix == EXT_AUTHZ_STAT_PREFIX:
                    if rbac.HasField("rules") or engines:
                        raise XdsResourceError(f"{where}: CUSTOM rules must come first, alone")
                    (marking,) = rbac_filter_from_proto(rbac)
                    continue
                engines.extend(rbac_filter_from_proto(rbac))
            elif url == EXT_AUTHZ_TYPE_URL:
                if marking is None:
                    raise XdsResourceError(f"{where}: ext_authz without istio_ext_authz_ rules")
                config = _unpack(f.typed_config, where)
                custom = Rbac(
                    RbacAction.ALLOW, marking.policies, ext_authz=ext_authz_from_proto(config)
                )
                engines.append(custom)
                marking = None
            elif url == JWT_TYPE_URL:
                if jwt is not None or engines:
                    raise XdsResourceError(f"{where}: jwt_authn must come once, before RBAC")
                config = _unpack(f.typed_config, where)
                jwt = jwt_authentication_from_proto(config)
            elif url == ROUTER_TYPE_URL:
                raise XdsResourceError(f"{where}: the router must be the last http filter")
            elif not f.is_optional:
                raise XdsResourceError(f"{where}: {url or 'no config'} is not supported")
        except PolicyConfigError as exc:
            raise XdsResourceError(f"{where}: {exc}") from None
    if marking is not None:
        raise XdsResourceError("the istio_ext_authz_ rules need the ext_authz filter next")
    return tuple(engines), jwt


def _unpack(config: Any, where: str) -> Any:
    """The message of the type its type_url names (callers checked the URL)."""
    return unpack_any(config, config.type_url.rsplit("/", 1)[-1], where)
