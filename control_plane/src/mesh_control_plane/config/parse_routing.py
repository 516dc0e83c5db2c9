"""DestinationRule and VirtualService specs -> model objects.

Only the traffic features the translator implements are accepted; every other
Istio field is named in an "unsupported" list so the operator reads
"not supported yet" instead of "unknown field" and knows it is not a typo.
Traffic policies are read by parse_policies.py, the http[] resilience and
rewriting fields by parse_http.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .model import (
    Destination,
    DestinationRule,
    HTTPMatchRequest,
    HTTPRoute,
    HTTPRouteDestination,
    Meta,
    StringMatch,
    Subset,
    VirtualService,
)
from .parse_cors import ANSWER_EXCLUDES, parse_cors, parse_direct_response
from .parse_gateway import TcpMatch, TcpRoute, TlsMatch, TlsRoute
from .parse_http import (
    parse_fault,
    parse_headers,
    parse_mirrors,
    parse_redirect,
    parse_retries,
    parse_rewrite,
)
from .parse_policies import parse_traffic_policy
from .schema import (
    MISSING,
    NOT_SUPPORTED,
    Problems,
    check_host,
    check_host_pattern,
    check_str,
    get_bool,
    get_int,
    get_list,
    get_object,
    get_str,
    get_str_map,
    index,
    is_dns_label,
    is_dns_subdomain,
    join,
    read_object,
)
from .syntax import not_in_re2, parse_duration
from .visibility import parse_export_to

_DR_FIELDS = ("host", "trafficPolicy", "subsets", "exportTo")
_DR_UNSUPPORTED = ("workloadSelector",)
_VS_FIELDS = ("hosts", "gateways", "http", "tls", "tcp", "exportTo")
_VS_UNSUPPORTED: tuple[str, ...] = ()
_TLS_MATCH_FIELDS = ("sniHosts", "port", "gateways")
_TLS_MATCH_UNSUPPORTED = ("destinationSubnets", "sourceLabels", "sourceNamespace")
_TCP_MATCH_FIELDS = ("port", "gateways")
_TCP_MATCH_UNSUPPORTED = ("destinationSubnets", "sourceLabels", "sourceNamespace", "sourceSubnet")
_ROUTE_FIELDS = (
    "name",
    "match",
    "route",
    "timeout",
    "retries",
    "fault",
    "mirror",
    "mirrors",
    "mirrorPercentage",
    "rewrite",
    "redirect",
    "headers",
    "corsPolicy",
    "directResponse",
    "delegate",
)
_ROUTE_UNSUPPORTED = ("mirrorPercent", "mirror_percent")
_MATCH_FIELDS = ("name", "uri", "headers", "method", "ignoreUriCase", "gateways", "port")
_MATCH_UNSUPPORTED = (
    "queryParams",
    "sourceLabels",
    "authority",
    "scheme",
    "withoutHeaders",
    "sourceNamespace",
    "statPrefix",
)
_STRING_MATCH_KINDS = ("exact", "prefix", "regex")
_HEADER_NAME = re.compile(r":?[!#$%&'*+\-.^_`|~0-9a-z]+")


def parse_destination_rule(p: Problems, meta: Meta, spec: Mapping[str, Any]) -> DestinationRule:
    spec = read_object(p, spec, "spec", _DR_FIELDS, _DR_UNSUPPORTED)
    host = ""
    if "host" not in spec:
        p.schema("spec.host", MISSING)
    else:
        host = check_host(p, spec["host"], "spec.host")
    subsets: list[Subset] = []
    for i, raw in enumerate(get_list(p, spec, "subsets", "spec")):
        where = index("spec.subsets", i)
        obj = read_object(p, raw, where, ("name", "labels", "trafficPolicy"))
        name = get_str(p, obj, "name", where, required=True) or ""
        if name and not is_dns_label(name):
            p.add(join(where, "name"), f'invalid subset name "{name}" (expected a DNS label)')
        if name and any(s.name == name for s in subsets):
            p.add(join(where, "name"), f'duplicate subset name "{name}"')
        subsets.append(
            Subset(
                name=name,
                labels=get_str_map(p, obj, "labels", where),
                traffic_policy=parse_traffic_policy(p, obj, where),
            )
        )
    return DestinationRule(
        meta=meta,
        host=host,
        traffic_policy=parse_traffic_policy(p, spec, "spec"),
        subsets=tuple(subsets),
        export_to=parse_export_to(p, spec),
    )


def parse_virtual_service(p: Problems, meta: Meta, given: Mapping[str, Any]) -> VirtualService:
    """A VirtualService; one without `hosts` is a delegate (Istio): its routes
    serve the root VirtualServices whose http[].delegate names it."""
    spec = read_object(p, given, "spec", _VS_FIELDS, _VS_UNSUPPORTED)
    gateways = _parse_gateways(p, meta, spec)
    hosts: list[str] = []
    is_delegate = isinstance(spec.get("hosts", []), list) and not spec.get("hosts")
    if is_delegate and spec.get("gateways"):
        p.add("spec.gateways", "a delegate VirtualService (no hosts) must not name gateways")
    for i, raw in enumerate(get_list(p, spec, "hosts", "spec")):
        where = index("spec.hosts", i)
        # Wildcards only where Envoy matches hosts: mesh clients look services up by name.
        check = check_host if "mesh" in gateways else check_host_pattern
        host = check(p, raw, where)
        if host and host in hosts:
            p.add(index("spec.hosts", i), f'duplicate host "{host}"')
        hosts.append(host)
    # With tcp/tls routes a missing `http` is not an error.
    http_required = not (isinstance(given, Mapping) and ("tcp" in given or "tls" in given))
    raw_routes = get_list(p, spec, "http", "spec", required=http_required, non_empty=http_required)
    routes = tuple(
        _parse_http_route(p, meta, raw, index("spec.http", i)) for i, raw in enumerate(raw_routes)
    )
    for i, route in enumerate(routes):
        if is_delegate and route.delegate is not None:
            p.add(index("spec.http", i) + ".delegate", "a delegate VirtualService cannot delegate")
    tls = tuple(
        _parse_tls_route(p, meta, raw, index("spec.tls", i))
        for i, raw in enumerate(get_list(p, spec, "tls", "spec"))
    )
    if tls and "mesh" in gateways:
        p.add("spec.tls", f"for mesh clients {NOT_SUPPORTED} (bind it to gateways only)")
    tcp = tuple(
        _parse_tcp_route(p, meta, raw, index("spec.tcp", i))
        for i, raw in enumerate(get_list(p, spec, "tcp", "spec"))
    )
    if tcp and "mesh" in gateways:
        p.add("spec.tcp", f"for mesh clients {NOT_SUPPORTED} (bind it to gateways only)")
    return VirtualService(
        meta=meta,
        hosts=tuple(hosts),
        http=routes,
        gateways=gateways,
        tls=tls,
        export_to=parse_export_to(p, spec),
        tcp=tcp,
    )


def _parse_tcp_route(p: Problems, meta: Meta, raw: object, where: str) -> TcpRoute:
    """`tcp[]`: optional port/gateway matches and weighted destinations."""
    obj = read_object(p, raw, where, ("match", "route"))
    matches = []
    for i, item in enumerate(get_list(p, obj, "match", where)):
        here = index(join(where, "match"), i)
        match = read_object(p, item, here, _TCP_MATCH_FIELDS, _TCP_MATCH_UNSUPPORTED)
        port = get_int(p, match, "port", here, low=1, high=65535)
        gateways = _parse_gateways(p, meta, match, here) if "gateways" in match else ()
        matches.append(TcpMatch(port, gateways))
    return TcpRoute(tuple(matches), _parse_destinations(p, obj, where))


def _parse_tls_route(p: Problems, meta: Meta, raw: object, where: str) -> TlsRoute:
    """`tls[]`: SNI matches and weighted destinations (TLS is passed through)."""
    obj = read_object(p, raw, where, ("match", "route"))
    matches = []
    for i, item in enumerate(get_list(p, obj, "match", where, required=True, non_empty=True)):
        here = index(join(where, "match"), i)
        match = read_object(p, item, here, _TLS_MATCH_FIELDS, _TLS_MATCH_UNSUPPORTED)
        sni = tuple(
            check_host_pattern(p, host, index(join(here, "sniHosts"), j))
            for j, host in enumerate(get_list(p, match, "sniHosts", here, required=True))
        )
        port = get_int(p, match, "port", here, low=1, high=65535)
        gateways = _parse_gateways(p, meta, match, here) if "gateways" in match else ()
        matches.append(TlsMatch(sni, port, gateways))
    return TlsRoute(tuple(matches), _parse_destinations(p, obj, where))


def _parse_gateways(
    p: Problems, meta: Meta, spec: Mapping[str, Any], path: str = "spec"
) -> tuple[str, ...]:
    """`gateways`: "mesh", or a Gateway as "name" (the VirtualService's
    namespace) or "namespace/name"; absent means ["mesh"] (Istio's default)."""
    names: list[str] = []
    for i, raw in enumerate(get_list(p, spec, "gateways", path, non_empty=True)):
        where = index(join(path, "gateways"), i)
        name = check_str(p, raw, where)
        if name is None:
            continue
        namespace, _, gateway = name.rpartition("/")
        if name != "mesh":
            namespace = namespace or meta.namespace
            if not (is_dns_label(namespace) and gateway and is_dns_subdomain(gateway)):
                p.add(where, f'invalid gateway "{name}" (expected "mesh", "name" or "ns/name")')
            name = f"{namespace}/{gateway}"
        if name in names:
            p.add(where, f'duplicate gateway "{raw}"')
        names.append(name)
    return tuple(names) if "gateways" in spec else ("mesh",)


def _parse_http_route(p: Problems, meta: Meta, raw: object, where: str) -> HTTPRoute:
    obj = read_object(p, raw, where, _ROUTE_FIELDS, _ROUTE_UNSUPPORTED)
    matches = tuple(
        _parse_match(p, meta, m, index(join(where, "match"), i))
        for i, m in enumerate(get_list(p, obj, "match", where))
    )
    timeout = None
    if "timeout" in obj:
        timeout_where = join(where, "timeout")
        text = check_str(p, obj["timeout"], timeout_where)
        if text is not None:
            timeout = parse_duration(text)
            if timeout is None:
                p.add(
                    timeout_where,
                    f'invalid duration "{text}" (expected e.g. "1.5s", "300ms", "2m")',
                )
    redirect = parse_redirect(p, obj, where)
    direct = parse_direct_response(p, obj, where)
    if redirect is not None:
        # Istio: a redirect answers the request itself, so nothing may forward it.
        for key in (*ANSWER_EXCLUDES, "fault", "directResponse"):
            if key in obj:
                p.add(join(where, key), "cannot be used together with redirect")
    elif direct is not None:
        for key in ANSWER_EXCLUDES:
            if key in obj:
                p.add(join(where, key), "cannot be used together with directResponse")
    delegate = _parse_delegate(p, obj, where, meta.namespace)
    if delegate is not None:
        for key in ("route", "redirect", "directResponse"):
            if key in obj:
                p.add(join(where, key), "cannot be used together with delegate")
    answers = redirect is not None or direct is not None or delegate is not None
    return HTTPRoute(
        name=get_str(p, obj, "name", where) or "",
        match=matches,
        route=() if answers else _parse_destinations(p, obj, where),
        timeout=timeout,
        retries=parse_retries(p, obj, where),
        fault=parse_fault(p, obj, where),
        mirrors=parse_mirrors(p, obj, where, _parse_destination),
        rewrite=parse_rewrite(p, obj, where),
        redirect=redirect,
        headers=parse_headers(p, obj, where),
        cors=parse_cors(p, obj, where, _parse_string_match),
        direct_response=direct,
        delegate=delegate,
    )


def _parse_delegate(
    p: Problems, obj: Mapping[str, Any], where: str, namespace: str
) -> tuple[str, str] | None:
    delegate = get_object(p, obj, "delegate", where, ("name", "namespace"))
    if delegate is None:
        return None
    where = join(where, "delegate")
    name = get_str(p, delegate, "name", where, required=True) or ""
    return get_str(p, delegate, "namespace", where) or namespace, name


def _parse_destinations(
    p: Problems, obj: Mapping[str, Any], where: str
) -> tuple[HTTPRouteDestination, ...]:
    """Weighted destinations: Istio's rule is that several must sum to 100."""
    route_where = join(where, "route")
    raws = get_list(p, obj, "route", where)
    if "route" not in obj:
        p.add(route_where, f"{MISSING} (a route needs at least one destination)")
    elif isinstance(obj["route"], list) and not raws:
        p.add(route_where, "must have at least one destination")
    result: list[HTTPRouteDestination] = []
    weights: list[int | None] = []
    for i, raw in enumerate(raws):
        dest_where = index(route_where, i)
        item = read_object(p, raw, dest_where, ("destination", "weight"), ("headers",))
        weight = get_int(p, item, "weight", dest_where, low=0, high=100)
        weights.append(weight)
        result.append(
            HTTPRouteDestination(
                destination=_parse_destination(p, item, dest_where), weight=weight or 0
            )
        )
    if len(raws) > 1:
        total = sum(w or 0 for w in weights)
        if total != 100:
            p.add(route_where, f"weights must sum to 100, got {total}")
    elif len(raws) == 1 and weights[0] not in (None, 100):
        p.add(
            join(index(route_where, 0), "weight"),
            "a single destination takes all traffic: omit weight or set it to 100",
        )
    return tuple(result)


def _parse_destination(p: Problems, item: Mapping[str, Any], where: str) -> Destination:
    obj = get_object(p, item, "destination", where, ("host", "subset", "port"), required=True)
    where = join(where, "destination")
    obj = obj or {}
    host = ""
    if "host" in obj:
        host = check_host(p, obj["host"], join(where, "host"))
    elif "destination" in item:
        p.schema(join(where, "host"), MISSING)
    subset = get_str(p, obj, "subset", where)
    if subset is not None and not is_dns_label(subset):
        p.add(join(where, "subset"), f'invalid subset name "{subset}" (expected a DNS label)')
    port = None
    port_obj = get_object(p, obj, "port", where, ("number",))
    if port_obj is not None:
        port = get_int(p, port_obj, "number", join(where, "port"), required=True, low=1, high=65535)
    return Destination(host=host, subset=subset, port=port)


def _parse_match(p: Problems, meta: Meta, raw: object, where: str) -> HTTPMatchRequest:
    obj = read_object(p, raw, where, _MATCH_FIELDS, _MATCH_UNSUPPORTED)
    headers: dict[str, StringMatch] = {}
    if "headers" in obj:
        headers_where = join(where, "headers")
        raw_headers = obj["headers"]
        if not isinstance(raw_headers, Mapping):
            read_object(p, raw_headers, headers_where, ())  # reports the type
        else:
            for name, value in raw_headers.items():
                header_where = join(headers_where, name)
                lowered = str(name).lower()
                if not isinstance(name, str) or not _HEADER_NAME.fullmatch(lowered):
                    p.add(header_where, f"invalid header name {name!r}")
                    continue
                match = _parse_string_match(p, value, header_where)
                if lowered in headers:
                    p.add(header_where, f'header "{lowered}" is matched twice')
                elif match is not None:
                    headers[lowered] = match
    return HTTPMatchRequest(
        gateways=_parse_gateways(p, meta, obj, where) if "gateways" in obj else (),
        port=get_int(p, obj, "port", where, low=1, high=65535),
        name=get_str(p, obj, "name", where) or "",
        uri=_parse_string_match(p, obj.get("uri"), join(where, "uri")),
        method=_parse_string_match(p, obj.get("method"), join(where, "method")),
        headers=headers,
        ignore_uri_case=bool(get_bool(p, obj, "ignoreUriCase", where)),
    )


def _parse_string_match(p: Problems, raw: object, where: str) -> StringMatch | None:
    """Istio's StringMatch: exactly one of exact / prefix / regex (Python `re` syntax
    checks it; RE2, which Envoy and gRPC use, is close to a subset of it)."""
    if raw is None:
        return None
    obj = read_object(p, raw, where, _STRING_MATCH_KINDS)
    if not isinstance(raw, Mapping):
        return None
    kinds = [kind for kind in _STRING_MATCH_KINDS if kind in obj]
    if len(kinds) != 1:
        # An unknown key was reported already; don't pile this message onto it.
        if all(key in _STRING_MATCH_KINDS for key in raw):
            p.add(where, "must set exactly one of exact, prefix, regex")
        return None
    kind = kinds[0]
    value = check_str(p, obj[kind], join(where, kind))
    if value is None:
        return None
    if kind == "regex":
        try:
            re.compile(value)
        except re.error as err:
            p.add(join(where, kind), f"invalid regex {value!r}: {err}")
            return None
        missing = not_in_re2(value)
        if missing:
            p.add(join(where, kind), f"invalid regex {value!r}: RE2 (Envoy, gRPC) has no {missing}")
            return None
    return StringMatch(kind=kind, value=value)
