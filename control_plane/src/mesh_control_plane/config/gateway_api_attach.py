"""Which routes a Gateway API listener admits (`allowedRoutes`), and a route's
Accepted condition per parent Gateway, as the Gateway API specifies them.

A listener admits routes of its own namespace (`from: Same`, the default),
of any (`All`), or of the namespaces a label selector picks (`Selector`).
Namespace labels are not read by this control plane, so a selector may name
namespaces only by the label Kubernetes puts on every namespace,
``kubernetes.io/metadata.name`` (matchLabels, or matchExpressions with In);
any other label is refused by field. `kinds` narrows the route kinds from the
protocol's default (HTTP/HTTPS: HTTPRoute and GRPCRoute; TLS: TLSRoute; TCP:
TCPRoute); a kind the protocol cannot serve is refused by field.

Admitted namespaces become the server hosts' namespaces (GatewayHost), and the
kinds the server's `route_kinds`, so translate/gateway.py serves exactly what
`attachment()` reports: a route no listener admits (by namespace or kind) is
`Accepted=False, NotAllowedByListeners`; one admitted but whose hostnames
intersect no admitting listener's is `NoMatchingListenerHostname`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .gateway_api_refs import GROUP
from .model import VirtualService
from .parse_gateway import Gateway, GatewayServer, ParentRef
from .schema import (
    MISSING,
    NOT_SUPPORTED,
    Problems,
    check_enum,
    get_list,
    get_object,
    get_str,
    get_str_map,
    index,
    join,
    read_object,
)

DEFAULT_KINDS = {
    "HTTP": ("HTTPRoute", "GRPCRoute"),
    "HTTPS": ("HTTPRoute", "GRPCRoute"),
    "TLS": ("TLSRoute",),
    "TCP": ("TCPRoute",),
}
NAME_LABEL = "kubernetes.io/metadata.name"
NOT_ALLOWED = "NotAllowedByListeners"
NO_MATCHING_HOSTNAME = "NoMatchingListenerHostname"


def parse_allowed_routes(
    p: Problems, listener: Mapping[str, Any], where: str, namespace: str, protocol: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(namespaces admitted, "*" for all; route kinds admitted) of a listener."""
    here = join(where, "allowedRoutes")
    obj = get_object(p, listener, "allowedRoutes", where, ("namespaces", "kinds")) or {}
    spaces = get_object(p, obj, "namespaces", here, ("from", "selector")) or {}
    spaces_where = join(here, "namespaces")
    origin = check_enum(
        p, spaces.get("from", "Same"), join(spaces_where, "from"), ("Same", "All", "Selector")
    )
    if "selector" in spaces and origin != "Selector":
        p.add(join(spaces_where, "selector"), "is read only with from: Selector")
    namespaces: tuple[str, ...] = (namespace,)
    if origin == "All":
        namespaces = ("*",)
    elif origin == "Selector":
        namespaces = _selected(p, spaces, spaces_where)
    defaults = DEFAULT_KINDS.get(protocol, ())
    kinds = []
    for i, raw in enumerate(get_list(p, obj, "kinds", here)):
        kind_where = index(join(here, "kinds"), i)
        item = read_object(p, raw, kind_where, ("group", "kind"))
        kind = get_str(p, item, "kind", kind_where, required=True) or ""
        group = get_str(p, item, "group", kind_where)
        if group not in (None, GROUP) or (kind and kind not in defaults):
            p.add(
                kind_where,
                f"a {protocol} listener serves {', '.join(defaults)} of {GROUP}, not "
                f"{kind} of {group or GROUP}",
            )
        kinds.append(kind)
    return namespaces, tuple(kinds) or defaults


def _selected(p: Problems, spaces: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """The namespaces a selector names by `kubernetes.io/metadata.name`."""
    here = join(where, "selector")
    selector = get_object(p, spaces, "selector", where, ("matchLabels", "matchExpressions"))
    if selector is None:
        p.add(here, f"{MISSING} (from: Selector)")
        return ()
    found: set[str] | None = None
    for key, value in get_str_map(p, selector, "matchLabels", here).items():
        if _name_label(p, key, join(here, f"matchLabels.{key}")):
            found = {value} if found is None else found & {value}
    for i, raw in enumerate(get_list(p, selector, "matchExpressions", here)):
        expr_where = index(join(here, "matchExpressions"), i)
        expr = read_object(p, raw, expr_where, ("key", "operator", "values"))
        key = get_str(p, expr, "key", expr_where, required=True) or ""
        operator = get_str(p, expr, "operator", expr_where, required=True)
        if operator != "In":
            p.add(join(expr_where, "operator"), f"{operator} is {NOT_SUPPORTED} (supported: In)")
        values = {str(v) for v in get_list(p, expr, "values", expr_where, required=True)}
        if _name_label(p, key, join(expr_where, "key")):
            found = values if found is None else found & values
    if found is None:
        p.add(here, f"names no namespace by {NAME_LABEL}")
    return tuple(sorted(found or ()))


def _name_label(p: Problems, key: str, where: str) -> bool:
    if key != NAME_LABEL:
        p.add(
            where,
            f"namespace labels other than {NAME_LABEL} are {NOT_SUPPORTED} (this control "
            "plane does not read Namespaces)",
        )
    return key == NAME_LABEL


def binds(route: VirtualService, gateway: Gateway, server: GatewayServer) -> bool:
    """Whether `route` is bound to this listener of `gateway`: to the whole
    Gateway, or to this listener by a parentRef's sectionName or port."""
    if gateway.ref not in route.gateways:
        return False
    return not route.parent_refs or any(r.names(gateway.ref, server) for r in route.parent_refs)


def attachment(gateway: Gateway, route: VirtualService, parent: ParentRef) -> tuple[str, str]:
    """(reason, message) of `route`'s Accepted condition for `parent` (this
    Gateway, or one listener of it): reason "Accepted" when a listener there
    admits it and one of its hostnames."""
    namespace, kind = route.meta.namespace, route.meta.kind
    named = [s for s in gateway.servers if parent.names(gateway.ref, s)]
    if not named:
        return "NoMatchingParent", f"Gateway {gateway.ref} has no listener {parent}"
    admitting = [
        server
        for server in named
        if server.serves(kind) and any(h.namespace in ("*", namespace) for h in server.hosts)
    ]
    if not admitting:
        return NOT_ALLOWED, (
            f"no listener of Gateway {gateway.ref} admits {kind}s of namespace {namespace} "
            "(listeners[].allowedRoutes)"
        )
    if not any(
        h.admits(namespace, host) for s in admitting for h in s.hosts for host in route.hosts
    ):
        return NO_MATCHING_HOSTNAME, (
            f"no hostname of the route intersects an admitting listener's of Gateway {gateway.ref}"
        )
    return "Accepted", ""


def attached_routes(
    gateway: Gateway, server: GatewayServer, routes: Iterable[VirtualService]
) -> int:
    """How many routes bound to this listener it admits (namespace, kind and a
    hostname): its `status.listeners[].attachedRoutes`."""
    return sum(
        1
        for route in routes
        if binds(route, gateway, server)
        and server.serves(route.meta.kind)
        and any(h.admits(route.meta.namespace, host) for h in server.hosts for host in route.hosts)
    )
