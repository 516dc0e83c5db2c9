"""What the loader accepts, per kind and field, read from the parsers' own field
lists: the README's "Fields by kind" table is rendered from this (and a test
fails when the two disagree), so the manual cannot drift from the code."""

from __future__ import annotations

from . import parse_gateway_api as gwapi
from . import parse_gateway_api_l4 as gwapi_l4
from .gateway_api_attach import _ALLOWED_FIELDS, _KIND_FIELDS, _NAMESPACES_FIELDS
from .gateway_api_refs import _GRANT_FIELDS
from .label_selector import EXPRESSION_FIELDS, NAMESPACE_FIELDS, SELECTOR_FIELDS
from .parse_gateway import (
    _GW_FIELDS,
    _PORT_FIELDS,
    _SERVER_FIELDS,
    _SERVER_UNSUPPORTED,
    _TLS_FIELDS,
    _TLS_UNSUPPORTED,
)
from .parse_http import _RETRY_FIELDS, _RETRY_UNSUPPORTED
from .parse_mesh_config import _GRPC_FIELDS, _GRPC_UNSUPPORTED, _HTTP_FIELDS, _HTTP_UNSUPPORTED
from .parse_policies import _TP_FIELDS, _TP_UNSUPPORTED
from .parse_routing import (
    _DR_FIELDS,
    _DR_UNSUPPORTED,
    _MATCH_FIELDS,
    _MATCH_UNSUPPORTED,
    _ROUTE_FIELDS,
    _ROUTE_UNSUPPORTED,
    _VS_FIELDS,
    _VS_UNSUPPORTED,
)
from .parse_security import _JWT_FIELDS, _JWT_UNSUPPORTED, _PA_FIELDS, _RA_FIELDS, _TARGET_REFS
from .parse_services import _ENDPOINT_FIELDS, _SE_FIELDS, _SE_UNSUPPORTED
from .parse_sidecar import (
    _EGRESS_FIELDS,
    _EGRESS_UNSUPPORTED,
    _POLICY_FIELDS,
    _POLICY_UNSUPPORTED,
    _SIDECAR_FIELDS,
    _SIDECAR_UNSUPPORTED,
)
from .parse_workload_group import _SPEC_FIELDS as _WG_FIELDS

# AuthorizationPolicy fields the loader reads and then refuses with a reason
# (authorization.py): listed as refused.
_AP_ACCEPTED = ("selector", "action", "rules", "provider", "targetRef", "targetRefs")
_AP_REFUSED: tuple[str, ...] = ()

FIELDS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("ServiceEntry spec", _SE_FIELDS, _SE_UNSUPPORTED),
    ("ServiceEntry endpoints[]", _ENDPOINT_FIELDS, ()),
    ("WorkloadGroup spec", _WG_FIELDS, ()),
    ("DestinationRule spec", _DR_FIELDS, _DR_UNSUPPORTED),
    ("DestinationRule trafficPolicy", _TP_FIELDS, _TP_UNSUPPORTED),
    ("VirtualService spec", _VS_FIELDS, _VS_UNSUPPORTED),
    ("VirtualService http[]", _ROUTE_FIELDS, _ROUTE_UNSUPPORTED),
    ("VirtualService http[].match[]", _MATCH_FIELDS, _MATCH_UNSUPPORTED),
    ("VirtualService http[].retries", _RETRY_FIELDS, _RETRY_UNSUPPORTED),
    ("PeerAuthentication spec", _PA_FIELDS, _TARGET_REFS),
    ("AuthorizationPolicy spec", _AP_ACCEPTED, _AP_REFUSED),
    ("RequestAuthentication spec", _RA_FIELDS, ()),
    ("RequestAuthentication jwtRules[]", _JWT_FIELDS, _JWT_UNSUPPORTED),
    ("Gateway spec", _GW_FIELDS, ()),
    ("Gateway servers[]", _SERVER_FIELDS, _SERVER_UNSUPPORTED),
    ("Gateway servers[].port", _PORT_FIELDS[:3], _PORT_FIELDS[3:]),
    ("Gateway servers[].tls", _TLS_FIELDS, _TLS_UNSUPPORTED),
    ("Gateway (gateway.networking.k8s.io) spec", gwapi._GW_FIELDS, gwapi._GW_UNSUPPORTED),
    ("Gateway (gateway.networking.k8s.io) listeners[]", gwapi._LISTENER_FIELDS, ()),
    ("Gateway (gateway.networking.k8s.io) listeners[].allowedRoutes", _ALLOWED_FIELDS, ()),
    ("allowedRoutes.namespaces", _NAMESPACES_FIELDS, ()),
    ("allowedRoutes.namespaces.selector", SELECTOR_FIELDS, ()),
    ("allowedRoutes.namespaces.selector.matchExpressions[]", EXPRESSION_FIELDS, ()),
    ("allowedRoutes.kinds[]", _KIND_FIELDS, ()),
    ("Namespace (v1), for allowedRoutes selectors", NAMESPACE_FIELDS, ()),
    ("HTTPRoute spec", gwapi._ROUTE_FIELDS, ()),
    ("HTTPRoute rules[]", gwapi._RULE_FIELDS, gwapi._RULE_UNSUPPORTED),
    ("HTTPRoute rules[].matches[]", gwapi._MATCH_FIELDS, gwapi._MATCH_UNSUPPORTED),
    ("GRPCRoute spec", gwapi._ROUTE_FIELDS, ()),
    ("GRPCRoute rules[]", gwapi._RULE_FIELDS, gwapi._RULE_UNSUPPORTED),
    ("GRPCRoute rules[].matches[]", gwapi._GRPC_MATCH_FIELDS, ()),
    ("TLSRoute spec", gwapi_l4._ROUTE_FIELDS, ()),
    ("TLSRoute rules[]", gwapi_l4._RULE_FIELDS, ()),
    ("TCPRoute spec", gwapi_l4._TCP_ROUTE_FIELDS, ()),
    ("TCPRoute rules[]", gwapi_l4._RULE_FIELDS, ()),
    ("ReferenceGrant spec", _GRANT_FIELDS, ()),
    ("Sidecar spec", _SIDECAR_FIELDS, _SIDECAR_UNSUPPORTED),
    ("Sidecar egress[]", _EGRESS_FIELDS, _EGRESS_UNSUPPORTED),
    ("Sidecar outboundTrafficPolicy", _POLICY_FIELDS, _POLICY_UNSUPPORTED),
    ("MeshConfig (ConfigMap istio) envoyExtAuthzHttp", _HTTP_FIELDS, _HTTP_UNSUPPORTED),
    ("MeshConfig (ConfigMap istio) envoyExtAuthzGrpc", _GRPC_FIELDS, _GRPC_UNSUPPORTED),
)
"""(where, fields accepted, Istio fields refused as "not supported yet")."""

TABLE_START = "<!-- fields table: generated from config/supported.py -->"
TABLE_END = "<!-- end of generated fields table -->"


def fields_table() -> str:
    """The README's "Fields by kind" table, markdown, between its markers."""
    lines = [
        TABLE_START,
        "| where | fields accepted | Istio fields refused (not supported yet) |",
        "|---|---|---|",
    ]
    for where, accepted, refused in FIELDS:
        shown = [f for f in refused if "_" not in f]  # snake_case spellings are typos' aliases
        lines.append(
            f"| {where} | {', '.join(f'`{f}`' for f in accepted)} "
            f"| {', '.join(f'`{f}`' for f in shown)} |"
        )
    lines.append(TABLE_END)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(fields_table(), end="")
