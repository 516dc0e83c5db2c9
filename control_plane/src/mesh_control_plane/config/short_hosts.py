"""Istio's short host names: in a VirtualService or DestinationRule, a host
without a dot (`reviews`) means `reviews.<the resource's namespace>.svc.<domain>`.

Expanded once after parsing, so every later stage (references, translation,
diagnostics) sees the fully qualified name Istio would use. ServiceEntry hosts
are taken as written, as in Istio.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

from .model import Destination, DestinationRule, HTTPRoute, VirtualService
from .parse_gateway import TcpRoute, TlsRoute

_Layer4 = TypeVar("_Layer4", TlsRoute, TcpRoute)


def qualify(host: str, namespace: str, domain: str) -> str:
    """`host` as Istio resolves it for a resource in `namespace`."""
    if not host or "." in host or host == "*":
        return host
    return f"{host}.{namespace}.svc.{domain}"


def qualify_rule(rule: DestinationRule, domain: str) -> DestinationRule:
    host = qualify(rule.host, rule.meta.namespace, domain)
    return rule if host == rule.host else replace(rule, host=host)


def qualify_virtual_service(service: VirtualService, domain: str) -> VirtualService:
    namespace = service.meta.namespace

    def dest(d: Destination) -> Destination:
        return replace(d, host=qualify(d.host, namespace, domain))

    def route(r: HTTPRoute) -> HTTPRoute:
        return replace(
            r,
            route=tuple(replace(rd, destination=dest(rd.destination)) for rd in r.route),
            mirrors=tuple(replace(m, destination=dest(m.destination)) for m in r.mirrors),
        )

    def layer4(r: _Layer4) -> _Layer4:
        return replace(r, route=tuple(replace(d, destination=dest(d.destination)) for d in r.route))

    hosts = tuple(qualify(h, namespace, domain) for h in service.hosts)
    return replace(
        service,
        hosts=hosts,
        http=tuple(route(r) for r in service.http),
        tls=tuple(layer4(r) for r in service.tls),
        tcp=tuple(layer4(r) for r in service.tcp),
    )
