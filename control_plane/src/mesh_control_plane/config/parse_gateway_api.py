"""Gateway API (gateway.networking.k8s.io/v1) as a second way to say the same.

Read into the Istio model the rest of the control plane already serves, as
Istio itself converts them: a Gateway becomes an Istio Gateway selecting the
gateway workloads labelled ``gateway.networking.k8s.io/gateway-name: <name>``
(``meshctl gateway run --label ...``); an HTTPRoute becomes a VirtualService
bound to its parent Gateways, or, with a Service as parent (GAMMA), a
VirtualService for that Service's host bound to ``mesh``, so the mesh's own
clients route by it. Backends are Kubernetes Services by name:
``<name>.<namespace>.svc.<domain>`` (a short host, qualified as Istio's are).

PathPrefix matches whole path segments (``/a`` matches ``/a`` and ``/a/b``, not
``/ab``): it becomes an exact and a prefix match, as Istio converts it.
Weights are relative (0 drops a backend). A GRPCRoute is read the same
way, its method matches becoming `:path` matches (`/service/method`).
Listeners: HTTP, HTTPS (Terminate), TLS (Passthrough, for TLSRoutes:
parse_gateway_api_l4.py) and TCP; `allowedRoutes` (namespaces Same, All or by
label selector, kinds) and the route's attachment (parentRefs to a whole Gateway or, by
sectionName or port, one listener) are in gateway_api_attach.py. Not yet,
refused by field: filters, timeouts, query-parameter matches,
sessionPersistence, UDP listeners, parents of both kinds in one route,
certificates of another namespace and the other kinds. Backends of another
namespace need a ReferenceGrant; unresolved
backends do not refuse the configuration (see gateway_api_refs.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from .gateway_api_attach import parse_allowed_routes
from .gateway_api_refs import CROSS_NAMESPACE_SUFFIX
from .model import (
    Destination,
    HTTPMatchRequest,
    HTTPRoute,
    HTTPRouteDestination,
    Meta,
    StringMatch,
    VirtualService,
)
from .parse_gateway import (
    Gateway,
    GatewayHost,
    GatewayServer,
    ParentRef,
    ServerTls,
    check_ports_agree,
)
from .schema import (
    MISSING,
    NOT_SUPPORTED,
    Problems,
    check_enum,
    check_host_pattern,
    get_int,
    get_list,
    get_object,
    get_str,
    index,
    join,
    read_object,
)

API_VERSIONS = ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1")
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
_GW_FIELDS = ("gatewayClassName", "listeners")
_GW_UNSUPPORTED = ("addresses", "infrastructure", "backendTLS")
_LISTENER_FIELDS = ("name", "hostname", "port", "protocol", "tls", "allowedRoutes")
_PROTOCOLS = ("HTTP", "HTTPS", "TLS", "TCP")
_ROUTE_FIELDS = ("parentRefs", "hostnames", "rules")
_RULE_FIELDS = ("name", "matches", "backendRefs")
_RULE_UNSUPPORTED = ("filters", "timeouts", "retry", "sessionPersistence")
_MATCH_FIELDS = ("path", "headers", "method")
_MATCH_UNSUPPORTED = ("queryParams",)
_GRPC_MATCH_FIELDS = ("method", "headers")
_BACKEND_FIELDS = ("name", "namespace", "port", "weight", "kind", "group")
_PARENT_FIELDS = ("name", "namespace", "kind", "group", "port", "sectionName")
_PATH_TYPES = {"PathPrefix": "prefix", "Exact": "exact", "RegularExpression": "regex"}
_HEADER_TYPES = {"Exact": "exact", "RegularExpression": "regex"}


def parse_k8s_gateway(p: Problems, meta: Meta, spec: Mapping[str, Any]) -> Gateway:
    obj = read_object(p, spec, "spec", _GW_FIELDS, _GW_UNSUPPORTED)
    get_str(p, obj, "gatewayClassName", "spec", required=True)
    servers: list[GatewayServer | None] = []
    for i, raw in enumerate(get_list(p, obj, "listeners", "spec", required=True, non_empty=True)):
        where = index("spec.listeners", i)
        listener = read_object(p, raw, where, _LISTENER_FIELDS)
        number = get_int(p, listener, "port", where, required=True, low=1, high=65535) or 0
        text = get_str(p, listener, "protocol", where, required=True) or ""
        protocol = check_enum(p, text, join(where, "protocol"), _PROTOCOLS, ("UDP",))
        # A TCP listener has no hostname to match (the spec: ignored).
        hostname = "*" if protocol == "TCP" else get_str(p, listener, "hostname", where) or "*"
        pattern = check_host_pattern(p, hostname, join(where, "hostname"))
        allowed = parse_allowed_routes(p, listener, where, meta.namespace, protocol or "")
        hosts = tuple(GatewayHost(namespace, pattern) for namespace in allowed.namespaces)
        tls = ServerTls()
        tls_obj = get_object(p, listener, "tls", where, ("mode", "certificateRefs"))
        if protocol == "HTTPS":
            tls = _listener_tls(p, tls_obj, join(where, "tls"))
        elif protocol == "TLS":
            tls = _passthrough_tls(p, tls_obj, join(where, "tls"))
        elif tls_obj is not None:
            p.add(join(where, "tls"), "only an HTTPS or TLS listener has tls")
        name = get_str(p, listener, "name", where, required=True) or ""
        if number and protocol:
            servers.append(
                GatewayServer(
                    number,
                    protocol,
                    name,
                    hosts,
                    tls,
                    name,
                    allowed.kinds,
                    tuple(allowed.invalid_kinds),
                    allowed.selector,
                )
            )
        else:
            servers.append(None)
    check_ports_agree(p, servers, "spec.listeners", "protocol")
    return Gateway(
        meta=meta,
        selector={GATEWAY_NAME_LABEL: meta.name},
        servers=tuple(s for s in servers if s),
    )


def _passthrough_tls(p: Problems, tls: dict[str, Any] | None, where: str) -> ServerTls:
    """A TLS listener passes TLS through, routed by SNI (TLSRoute)."""
    mode = (tls or {}).get("mode", "Terminate")
    if mode != "Passthrough":
        p.add(join(where, "mode"), f"{mode} on a TLS listener is {NOT_SUPPORTED} "
              "(supported: Passthrough; an HTTPS listener terminates TLS)")  # fmt: skip
    if tls and "certificateRefs" in tls:
        p.add(join(where, "certificateRefs"), "a Passthrough listener holds no certificate")
    return ServerTls("PASSTHROUGH")


def _listener_tls(p: Problems, tls: dict[str, Any] | None, where: str) -> ServerTls:
    if tls is None:
        p.add(where, f"{MISSING} (an HTTPS listener terminates TLS)")
        return ServerTls()
    mode = get_str(p, tls, "mode", where) or "Terminate"
    if mode != "Terminate":
        p.add(join(where, "mode"), f"{mode} is {NOT_SUPPORTED} (supported: Terminate)")
    refs = get_list(p, tls, "certificateRefs", where, required=True, non_empty=True)
    if len(refs) > 1:
        p.add(join(where, "certificateRefs"), f"several certificates are {NOT_SUPPORTED}")
    here = index(join(where, "certificateRefs"), 0)
    ref = read_object(p, refs[0], here, ("name", "kind", "group"), ("namespace",))
    if ref.get("kind", "Secret") != "Secret" or ref.get("group", "") != "":
        p.add(here, f"certificates other than Secrets are {NOT_SUPPORTED}")
    name = get_str(p, ref, "name", here, required=True)
    return ServerTls("SIMPLE", name or "")


def parse_http_route(p: Problems, meta: Meta, spec: Mapping[str, Any]) -> VirtualService:
    return _route(p, meta, spec, _matches)


def parse_grpc_route(p: Problems, meta: Meta, spec: Mapping[str, Any]) -> VirtualService:
    """A GRPCRoute: an HTTPRoute whose matches name gRPC methods (`/service/method`)."""
    return _route(p, meta, spec, _grpc_matches)


_MatchReader = Callable[[Problems, object, str], list[HTTPMatchRequest]]


def _route(
    p: Problems, meta: Meta, spec: Mapping[str, Any], read_matches: _MatchReader
) -> VirtualService:
    obj = read_object(p, spec, "spec", _ROUTE_FIELDS)
    gateways, services, parent_refs = parse_parents(p, meta, obj)
    if gateways and services:
        p.add("spec.parentRefs", f"Gateways and Services as parents of one route: {NOT_SUPPORTED}")
    hostnames = parse_hostnames(p, obj)
    if services and hostnames:
        p.add("spec.hostnames", "a route for a Service (GAMMA) has no hostnames")
    rules = tuple(
        _rule(p, meta, raw, index("spec.rules", i), read_matches)
        for i, raw in enumerate(get_list(p, obj, "rules", "spec", required=True, non_empty=True))
    )
    hosts = tuple(services) if services else tuple(hostnames or ["*"])
    binding = ("mesh",) if services else gateways
    return VirtualService(
        meta=meta, hosts=hosts, http=rules, gateways=binding, parent_refs=parent_refs
    )


def parse_parents(
    p: Problems, meta: Meta, obj: Mapping[str, Any]
) -> tuple[tuple[str, ...], list[str], tuple[ParentRef, ...]]:
    """`spec.parentRefs`: (Gateways as "ns/name", Services by name, each
    Gateway parent with its sectionName and port). A Gateway of another
    namespace admits the route by its listeners' allowedRoutes."""
    refs: list[ParentRef] = []
    services: list[str] = []
    for i, raw in enumerate(get_list(p, obj, "parentRefs", "spec", required=True, non_empty=True)):
        where = index("spec.parentRefs", i)
        ref = read_object(p, raw, where, _PARENT_FIELDS)
        name = get_str(p, ref, "name", where, required=True) or ""
        namespace = get_str(p, ref, "namespace", where) or meta.namespace
        kind = get_str(p, ref, "kind", where) or "Gateway"
        section = get_str(p, ref, "sectionName", where) or ""
        port = get_int(p, ref, "port", where, low=1, high=65535)
        if check_enum(p, kind, join(where, "kind"), ("Gateway", "Service")) == "Service":
            if namespace != meta.namespace:
                p.add(join(where, "namespace"), f"another namespace's Service: {NOT_SUPPORTED}")
            for key in ("port", "sectionName"):
                if key in ref:
                    p.add(join(where, key), f"of a Service parent: {NOT_SUPPORTED}")
            services.append(name)
        elif name:
            refs.append(ParentRef(f"{namespace}/{name}", section, port))
    gateways = tuple(dict.fromkeys(r.gateway for r in refs))
    return gateways, services, tuple(refs)


def parse_hostnames(p: Problems, obj: Mapping[str, Any]) -> list[str]:
    return [
        check_host_pattern(p, raw, index("spec.hostnames", i))
        for i, raw in enumerate(get_list(p, obj, "hostnames", "spec"))
    ]


def _rule(
    p: Problems, meta: Meta, raw: object, where: str, read_matches: _MatchReader
) -> HTTPRoute:
    obj = read_object(p, raw, where, _RULE_FIELDS, _RULE_UNSUPPORTED)
    matches: list[HTTPMatchRequest] = []
    for i, item in enumerate(get_list(p, obj, "matches", where)):
        matches.extend(read_matches(p, item, index(join(where, "matches"), i)))
    backends = parse_backends(p, meta, obj, where)
    return HTTPRoute(
        name=get_str(p, obj, "name", where) or "", match=tuple(matches), route=tuple(backends)
    )


def parse_backends(
    p: Problems, meta: Meta, obj: Mapping[str, Any], where: str
) -> tuple[HTTPRouteDestination, ...]:
    """A rule's `backendRefs`: Services by name, port and relative weight (0
    drops one); at least one must be left."""
    backends = []
    for i, item in enumerate(get_list(p, obj, "backendRefs", where, required=True)):
        here = index(join(where, "backendRefs"), i)
        ref = read_object(p, item, here, _BACKEND_FIELDS)
        if ref.get("kind", "Service") != "Service" or ref.get("group", "") != "":
            p.add(here, f"backends other than Services are {NOT_SUPPORTED}")
        name = get_str(p, ref, "name", here, required=True) or ""
        namespace = get_str(p, ref, "namespace", here) or meta.namespace
        port = get_int(p, ref, "port", here, required=True, low=1, high=65535)
        weight = get_int(p, ref, "weight", here, low=0, high=1_000_000)
        # Another namespace's Service: permitted by a ReferenceGrant or not
        # (gateway_api_refs.py, once every resource is read).
        host = (
            name if namespace == meta.namespace else f"{name}.{namespace}{CROSS_NAMESPACE_SUFFIX}"
        )
        if weight != 0:
            backends.append(HTTPRouteDestination(Destination(host, None, port), weight or 1))
    if not backends:
        p.add(join(where, "backendRefs"), "needs a backend of non-zero weight")
    return tuple(backends)


def _headers(p: Problems, obj: Mapping[str, Any], where: str) -> dict[str, StringMatch]:
    headers: dict[str, StringMatch] = {}
    for i, item in enumerate(get_list(p, obj, "headers", where)):
        here = index(join(where, "headers"), i)
        header = read_object(p, item, here, ("type", "name", "value"))
        kind = check_enum(p, header.get("type", "Exact"), join(here, "type"), tuple(_HEADER_TYPES))
        name = (get_str(p, header, "name", here, required=True) or "").lower()
        value = get_str(p, header, "value", here, required=True) or ""
        if kind:
            headers[name] = StringMatch(_HEADER_TYPES[kind], value)
    return headers


def _grpc_matches(p: Problems, raw: object, where: str) -> list[HTTPMatchRequest]:
    """`method` {type Exact|RegularExpression, service, method} as the `:path`
    gRPC sends, `/service/method`: Exact with both names is that path, with
    the service alone every method of it, with the method alone that method
    of any service; RegularExpression puts either (default: any) in a regex."""
    obj = read_object(p, raw, where, _GRPC_MATCH_FIELDS)
    headers = _headers(p, obj, where)
    method = get_object(p, obj, "method", where, ("type", "service", "method")) or {}
    here = join(where, "method")
    kind = check_enum(
        p, str(method.get("type", "Exact")), join(here, "type"), ("Exact", "RegularExpression")
    )
    service = get_str(p, method, "service", here) or ""
    name = get_str(p, method, "method", here) or ""
    if kind == "RegularExpression":
        uri = StringMatch("regex", f"/({service or '[^/]+'})/({name or '[^/]+'})")
    elif service and name:
        uri = StringMatch("exact", f"/{service}/{name}")
    elif service:
        uri = StringMatch("prefix", f"/{service}/")
    elif name:
        uri = StringMatch("regex", f"/[^/]+/{re.escape(name)}")
    else:
        uri = StringMatch("prefix", "/")
    return [HTTPMatchRequest(uri=uri, headers=headers)]


def _matches(p: Problems, raw: object, where: str) -> list[HTTPMatchRequest]:
    obj = read_object(p, raw, where, _MATCH_FIELDS, _MATCH_UNSUPPORTED)
    headers = _headers(p, obj, where)
    method = get_str(p, obj, "method", where)
    base = HTTPMatchRequest(
        headers=headers, method=StringMatch("exact", method) if method else None
    )
    path = get_object(p, obj, "path", where, ("type", "value")) or {}
    kind = check_enum(
        p, path.get("type", "PathPrefix"), join(where, "path.type"), tuple(_PATH_TYPES)
    )
    value = str(path.get("value", "/"))
    if not value.startswith("/"):
        p.add(join(where, "path.value"), f'must start with "/", got "{value}"')
    if kind == "PathPrefix" and value.rstrip("/"):
        # Whole segments: "/a" is "/a" itself or anything under "/a/".
        trimmed = value.rstrip("/")
        return [
            _with_uri(base, StringMatch("exact", trimmed)),
            _with_uri(base, StringMatch("prefix", trimmed + "/")),
        ]
    return [_with_uri(base, StringMatch(_PATH_TYPES[kind or "PathPrefix"], value))]


def _with_uri(match: HTTPMatchRequest, uri: StringMatch) -> HTTPMatchRequest:
    return HTTPMatchRequest(uri=uri, method=match.method, headers=match.headers)
