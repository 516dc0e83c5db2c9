"""Which routes a Gateway API listener admits (`allowedRoutes`), and a route's
Accepted condition per parent Gateway, as the Gateway API specifies them.

A listener admits routes of its own namespace (`from: Same`, the default),
of any (`All`), or of the namespaces a label selector picks (`Selector`:
label_selector.py, applied to the labels of the Namespaces read, a
Kubernetes watch or `v1 Namespace` documents of the config directory, once
every resource is read: `resolve_selectors`). `kinds` narrows the route kinds
from the protocol's default (HTTP/HTTPS: HTTPRoute and GRPCRoute; TLS:
TLSRoute; TCP: TCPRoute); a kind the protocol cannot serve does not refuse the
configuration: as the spec says, the listener's ResolvedRefs is False
(InvalidRouteKinds), its supportedKinds list the valid ones only, and it
serves those (none: no route).

Admitted namespaces become the server hosts' namespaces (GatewayHost), and the
kinds the server's `route_kinds`, so translate/gateway.py serves exactly what
`attachment()` reports: a route no listener admits (by namespace or kind) is
`Accepted=False, NotAllowedByListeners`; one admitted but whose hostnames
intersect no admitting listener's is `NoMatchingListenerHostname`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ConfigProblem
from .gateway_api_refs import GROUP, ROUTE_KINDS
from .label_selector import (
    SELECTOR_FIELDS,
    LabelSelector,
    namespace_labels,
    parse_label_selector,
)
from .model import MeshConfig, VirtualService
from .parse_gateway import Gateway, GatewayHost, GatewayServer, ParentRef
from .schema import (
    MISSING,
    Problems,
    check_enum,
    get_list,
    get_object,
    get_str,
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
_ALLOWED_FIELDS = ("namespaces", "kinds")
_NAMESPACES_FIELDS = ("from", "selector")
_KIND_FIELDS = ("group", "kind")
NOT_ALLOWED = "NotAllowedByListeners"
NO_MATCHING_HOSTNAME = "NoMatchingListenerHostname"
INVALID_ROUTE_KINDS = "InvalidRouteKinds"
# The namespace of a selector's listener until resolved, or when it picks
# none: no route's, so the listener keeps its hostname and admits nothing.
NO_NAMESPACE = ""


@dataclass
class AllowedRoutes:
    """A listener's `allowedRoutes`, read."""

    namespaces: tuple[str, ...] = ()  # "*" for all
    selector: LabelSelector | None = None
    kinds: tuple[str, ...] = ()
    invalid_kinds: list[tuple[str, str]] = field(default_factory=list)  # (field, message)


def parse_allowed_routes(
    p: Problems, listener: Mapping[str, Any], where: str, namespace: str, protocol: str
) -> AllowedRoutes:
    here = join(where, "allowedRoutes")
    allowed = AllowedRoutes()
    obj = get_object(p, listener, "allowedRoutes", where, _ALLOWED_FIELDS) or {}
    spaces = get_object(p, obj, "namespaces", here, _NAMESPACES_FIELDS) or {}
    spaces_where = join(here, "namespaces")
    origin = check_enum(
        p, spaces.get("from", "Same"), join(spaces_where, "from"), ("Same", "All", "Selector")
    )
    if "selector" in spaces and origin != "Selector":
        p.add(join(spaces_where, "selector"), "is read only with from: Selector")
    allowed.namespaces = (namespace,)
    if origin == "All":
        allowed.namespaces = ("*",)
    elif origin == "Selector":
        allowed.namespaces = (NO_NAMESPACE,)
        selector = get_object(p, spaces, "selector", spaces_where, SELECTOR_FIELDS)
        if selector is None:
            p.add(join(spaces_where, "selector"), f"{MISSING} (from: Selector)")
        else:
            allowed.selector = parse_label_selector(p, selector, join(spaces_where, "selector"))
    defaults = DEFAULT_KINDS.get(protocol, ())
    kinds = []
    for i, raw in enumerate(get_list(p, obj, "kinds", here)):
        kind_where = index(join(here, "kinds"), i)
        item = read_object(p, raw, kind_where, _KIND_FIELDS)
        kind = get_str(p, item, "kind", kind_where, required=True) or ""
        group = get_str(p, item, "group", kind_where)
        if group not in (None, GROUP) or (kind and kind not in defaults):
            message = (
                f"{kind} of {group or GROUP}: a {protocol} listener serves "
                f"{', '.join(defaults)} of {GROUP} ({INVALID_ROUTE_KINDS}; not served)"
            )
            allowed.invalid_kinds.append((kind_where, message))
        elif kind and kind not in kinds:
            kinds.append(kind)
    # Unspecified or empty: the protocol's kinds (the spec); only invalid ones: none.
    allowed.kinds = tuple(kinds) if obj.get("kinds") else defaults
    return allowed


def resolve_selectors(
    config: MeshConfig, declared: Mapping[str, Mapping[str, str]]
) -> tuple[MeshConfig, list[ConfigProblem]]:
    """The Gateways with each selector's listener admitting the namespaces it
    picks (among those of the routes: no other can attach), by the labels of
    the `declared` Namespaces; and a warning per listener kind not served."""
    route_namespaces = sorted(
        {vs.meta.namespace for vs in config.virtual_services if vs.meta.kind in ROUTE_KINDS}
    )
    warnings: list[ConfigProblem] = []
    gateways = []
    for gateway in config.gateways:
        servers = []
        for server in gateway.servers:
            warnings.extend(
                ConfigProblem(gateway.meta.file, gateway.meta.ref, where, message)
                for where, message in server.invalid_kinds
            )
            selector = server.namespace_selector
            if selector is not None:
                picked = [
                    ns
                    for ns in route_namespaces
                    if selector.matches(namespace_labels(declared, ns))
                ] or [NO_NAMESPACE]
                hostname = server.hosts[0].host
                hosts = tuple(GatewayHost(ns, hostname) for ns in picked)
                server = replace(server, hosts=hosts)
            servers.append(server)
        gateways.append(replace(gateway, servers=tuple(servers)))
    return replace(config, gateways=tuple(gateways)), warnings


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
