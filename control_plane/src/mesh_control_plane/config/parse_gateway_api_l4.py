"""Gateway API TLSRoute and TCPRoute (v1alpha2): TLS passed through by SNI on
a TLS listener (mode Passthrough), bytes proxied on a TCP listener.

Read into the VirtualService `tls` and `tcp` rules an Istio Gateway's TLS and
TCP servers already serve (translate/gateway.py), as Istio converts them: a
TLSRoute's hostnames are the SNI names matched (none: any SNI the listener's
hostname admits); a TCPRoute applies to the whole listener. Backends are
Services by name and port with relative weights, cross-namespace ones by
ReferenceGrant, as for an HTTPRoute. One rule per route: neither kind has
matches to choose between several (Istio takes one too); parents are Gateways.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model import HTTPRouteDestination, Meta, VirtualService
from .parse_gateway import ParentRef, TcpRoute, TlsMatch, TlsRoute
from .parse_gateway_api import parse_backends, parse_hostnames, parse_parents
from .schema import NOT_SUPPORTED, Problems, get_list, get_str, index, read_object

_ROUTE_FIELDS = ("parentRefs", "hostnames", "rules")
_TCP_ROUTE_FIELDS = ("parentRefs", "rules")
_RULE_FIELDS = ("name", "backendRefs")
API_VERSIONS = ("gateway.networking.k8s.io/v1alpha2",)


def parse_tls_route(p: Problems, meta: Meta, spec: Mapping[str, Any]) -> VirtualService:
    obj = read_object(p, spec, "spec", _ROUTE_FIELDS)
    gateways, refs = _gateways(p, meta, obj)
    hostnames = tuple(parse_hostnames(p, obj)) or ("*",)
    rule = TlsRoute((TlsMatch(hostnames),), _only_rule(p, meta, obj))
    return VirtualService(
        meta=meta, hosts=hostnames, gateways=gateways, tls=(rule,), parent_refs=refs
    )


def parse_tcp_route(p: Problems, meta: Meta, spec: Mapping[str, Any]) -> VirtualService:
    obj = read_object(p, spec, "spec", _TCP_ROUTE_FIELDS)
    gateways, refs = _gateways(p, meta, obj)
    rule = TcpRoute((), _only_rule(p, meta, obj))
    return VirtualService(meta=meta, hosts=("*",), gateways=gateways, tcp=(rule,), parent_refs=refs)


def _gateways(
    p: Problems, meta: Meta, obj: Mapping[str, Any]
) -> tuple[tuple[str, ...], tuple[ParentRef, ...]]:
    gateways, services, refs = parse_parents(p, meta, obj)
    if services:
        p.add("spec.parentRefs", f"a Service as parent (GAMMA) of a {meta.kind}: {NOT_SUPPORTED}")
    return gateways, refs


def _only_rule(p: Problems, meta: Meta, obj: Mapping[str, Any]) -> tuple[HTTPRouteDestination, ...]:
    rules = get_list(p, obj, "rules", "spec", required=True, non_empty=True)
    if len(rules) > 1:
        p.add("spec.rules", f"several rules are {NOT_SUPPORTED} (they have no matches)")
    where = index("spec.rules", 0)
    rule = read_object(p, rules[0] if rules else {}, where, _RULE_FIELDS)
    get_str(p, rule, "name", where)
    return parse_backends(p, meta, rule, where)
