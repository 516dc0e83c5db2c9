"""RDS: VirtualService http rules -> virtual hosts and routes.

One virtual host per (host, HTTP port), named and matched by ``<host>:<port>``: that
is the authority a gRPC channel (``xds:///host:port``) or an httpx request carries.
Routes keep the VirtualService's order, because the first matching route wins.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2

from mesh_control_plane.config.model import (
    ConsistentHash,
    Destination,
    HTTPMatchRequest,
    HTTPRoute,
    HTTPRouteDestination,
    StringMatch,
    VirtualService,
)
from mesh_control_plane.config.parse_cors import CorsPolicy, DirectResponse
from mesh_control_plane.translate.index import MeshIndex, Service
from mesh_control_plane.translate.names import (
    DEFAULT_ROUTE_NAME,
    authority,
    cluster_name,
    route_name,
)
from mesh_control_plane.translate.policy import effective_policy, subset_of
from mesh_control_plane.translate.protos import duration, pack
from mesh_control_plane.translate.route_policies import (
    apply_fault,
    apply_headers,
    apply_rewrite,
    hash_policy,
    mirror_policy,
    redirect_action,
    retry_policy,
)

METHOD_HEADER = ":method"
CORS_FILTER = "envoy.filters.http.cors"


def route_configuration(
    name: str, virtual_hosts: Iterable[rc_pb2.VirtualHost]
) -> route_pb2.RouteConfiguration:
    """A RouteConfiguration holding the given virtual hosts, sorted by name."""
    return route_pb2.RouteConfiguration(
        name=name, virtual_hosts=sorted(virtual_hosts, key=lambda vh: vh.name)
    )


def virtual_host(
    index: MeshIndex, service: Service, port: int, *, disable_default_timeout: bool
) -> rc_pb2.VirtualHost:
    """The virtual host for one service port.

    ``disable_default_timeout`` sets ``timeout: 0s`` on routes that have no
    VirtualService timeout. Envoy otherwise cuts every request at 15 s, while Istio's
    meaning of "no timeout" is none at all (Istio's sidecars set 0s the same way).
    Proxyless clients have no such default, so they are sent nothing.
    """
    name = authority(service.host, port)
    domains = [name]
    # A ServiceEntry's addresses name the service too (Istio's route domains).
    domains += [authority(address, port) for address in service.addresses]
    if port == 80:
        # An http:// URL on the default port carries a Host header without the port.
        domains.append(service.host)
        domains += [authority(address, port)[:-3] for address in service.addresses]
    return rc_pb2.VirtualHost(
        name=name,
        domains=domains,
        routes=_routes(index, service, port, disable_default_timeout),
    )


def _routes(
    index: MeshIndex, service: Service, port: int, disable_default_timeout: bool
) -> list[rc_pb2.Route]:
    vs = index.virtual_services.get(service.host)
    if vs is None or not vs.http:
        action = rc_pb2.RouteAction(cluster=cluster_name(service.host, port))
        if disable_default_timeout:
            action.timeout.CopyFrom(duration(0))
        hashing = _consistent_hash(index, Destination(host=service.host), port)
        _add_hash_and_retries(action, hashing, HTTPRoute())
        return [
            rc_pb2.Route(name=DEFAULT_ROUTE_NAME, match=rc_pb2.RouteMatch(prefix="/"), route=action)
        ]
    return http_routes(index, vs, port, disable_default_timeout)


def http_routes(
    index: MeshIndex,
    vs: VirtualService,
    port: int,
    disable_default_timeout: bool,
    bound_to: str = "mesh",
) -> list[rc_pb2.Route]:
    """A VirtualService's http rules as routes for a listener on ``port`` (a
    service port for the mesh, a server port for a gateway) of ``bound_to``
    ("mesh" or a Gateway's "ns/name"): a match naming other `gateways` or
    another `port` is left out, and a rule none of whose matches is left."""
    routes: list[rc_pb2.Route] = []
    for position, http in enumerate(vs.http):
        matches = [m for m in http.match if _applies(m, bound_to, port)]
        if http.match and not matches:
            continue
        name = route_name(vs.meta.namespace, vs.meta.name, http.name, position)
        template = rc_pb2.Route(name=name)
        if http.redirect is not None:
            template.redirect.CopyFrom(redirect_action(http.redirect))
        elif http.direct_response is not None:
            template.direct_response.CopyFrom(_direct_response(http.direct_response))
        else:
            action_or_none = _action(index, http, port, disable_default_timeout)
            if action_or_none is None:
                # No destination to forward to: nothing a client could do with the route.
                # Istio's validation rejects such rules; the loader does as well.
                continue
            template.route.CopyFrom(action_or_none)
        if http.fault is not None:
            apply_fault(template, http.fault)
        apply_headers(template, http.headers.request, http.headers.response)
        if http.cors is not None:
            template.typed_per_filter_config[CORS_FILTER].CopyFrom(_cors(http.cors))
        # Several match blocks are alternatives (OR): one Route each, same action.
        for match in matches or (HTTPMatchRequest(),):
            route = rc_pb2.Route()
            route.CopyFrom(template)
            route.match.CopyFrom(_route_match(match))
            routes.append(route)
    return routes


def _applies(match: HTTPMatchRequest, bound_to: str, port: int) -> bool:
    if match.gateways and bound_to not in match.gateways:
        return False
    return match.port is None or match.port == port


def _action(
    index: MeshIndex, http: HTTPRoute, listener_port: int, disable_default_timeout: bool
) -> rc_pb2.RouteAction | None:
    weighted = _weighted_clusters(index, http.route, listener_port)
    if not weighted:
        return None
    action = rc_pb2.RouteAction()
    if len(weighted) == 1:
        action.cluster = weighted[0][0]
    else:
        for name, weight in weighted:
            action.weighted_clusters.clusters.add(name=name).weight.value = weight
    if http.timeout is not None:
        action.timeout.CopyFrom(duration(http.timeout))
        # gRPC ignores route.timeout and reads the stream deadline from here (gRFC A31).
        action.max_stream_duration.max_stream_duration.CopyFrom(duration(http.timeout))
    elif disable_default_timeout:
        action.timeout.CopyFrom(duration(0))
    hashing = next(
        (
            found
            for d in http.route
            if (found := _consistent_hash(index, d.destination, listener_port)) is not None
        ),
        None,
    )
    _add_hash_and_retries(action, hashing, http)
    for mirror in http.mirrors:
        target = _destination_cluster(index, mirror.destination, listener_port)
        action.request_mirror_policies.append(mirror_policy(target, mirror.percentage))
    if http.rewrite is not None:
        apply_rewrite(action, http.rewrite)
    return action


def _add_hash_and_retries(
    action: rc_pb2.RouteAction, hashing: ConsistentHash | None, http: HTTPRoute
) -> None:
    """The hash key of the (first) destination that hashes, as Istio picks it for
    a weighted route, and the route's retry policy."""
    if hashing is not None:
        action.hash_policy.append(hash_policy(hashing))
    policy = retry_policy(http.retries, hashed=hashing is not None)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)


def _consistent_hash(
    index: MeshIndex, destination: Destination, listener_port: int
) -> ConsistentHash | None:
    rule = index.destination_rules.get(destination.host)
    port = destination_port(index, destination, listener_port)
    return effective_policy(rule, subset_of(rule, destination.subset), port).consistent_hash


def _weighted_clusters(
    index: MeshIndex, destinations: tuple[HTTPRouteDestination, ...], listener_port: int
) -> list[tuple[str, int]]:
    """(cluster, weight) pairs in the VirtualService's order, Istio's percent weights.

    A single destination takes all traffic whatever its weight. Among several,
    zero-weight destinations are dropped when any has weight: gRPC NACKs a split
    whose weights are all zero, and a zero-weight cluster only costs a subscription.
    When every weight is zero the traffic is split evenly rather than sent nowhere.
    Two destinations resolving to the same cluster are merged (weights added).
    """
    if len(destinations) == 1:
        return [(_destination_cluster(index, destinations[0].destination, listener_port), 100)]
    weighted = [(d.destination, d.weight) for d in destinations if d.weight > 0]
    if not weighted:
        weighted = [(d.destination, 1) for d in destinations]
    merged: dict[str, int] = {}
    for destination, weight in weighted:
        name = _destination_cluster(index, destination, listener_port)
        merged[name] = merged.get(name, 0) + weight
    return list(merged.items())


def _destination_cluster(index: MeshIndex, destination: Destination, listener_port: int) -> str:
    return cluster_name(
        destination.host,
        destination_port(index, destination, listener_port),
        destination.subset or "",
    )


def destination_port(index: MeshIndex, destination: Destination, listener_port: int) -> int:
    """The port of the destination's cluster, chosen as Istio does.

    The route's explicit port; else the listener's port if the destination host has
    it; else the destination's only port. Otherwise (an unknown host, or several
    ports and none matching) the listener's port, which names a cluster that does
    not exist: ``check_consistency`` reports it rather than the translator guessing.
    """
    if destination.port is not None:
        return destination.port
    service = index.services.get(destination.host)
    if service is None or service.port(listener_port) is not None:
        return listener_port
    if len(service.ports) == 1:
        return service.ports[0].number
    return listener_port


def _route_match(match: HTTPMatchRequest) -> rc_pb2.RouteMatch:
    route_match = rc_pb2.RouteMatch()
    uri = match.uri
    if uri is None:
        route_match.prefix = "/"
    elif uri.kind == "exact":
        route_match.path = uri.value
    elif uri.kind == "prefix":
        route_match.prefix = uri.value
    elif uri.kind == "regex":
        route_match.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=uri.value))
    else:
        raise ValueError(f"unknown StringMatch kind {uri.kind!r} for uri (exact|prefix|regex)")
    if match.ignore_uri_case:
        route_match.case_sensitive.value = False
    headers = dict(match.headers)
    if match.method is not None:
        headers[METHOD_HEADER] = match.method
    # All header conditions must hold (AND): their order does not matter, so sort.
    for name in sorted(headers):
        route_match.headers.add(name=name, string_match=_string_matcher(name, headers[name]))
    return route_match


def _string_matcher(field: str, match: StringMatch) -> string_pb2.StringMatcher:
    if match.kind == "exact":
        return string_pb2.StringMatcher(exact=match.value)
    if match.kind == "prefix":
        return string_pb2.StringMatcher(prefix=match.value)
    if match.kind == "regex":
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match.value))
    raise ValueError(f"unknown StringMatch kind {match.kind!r} for {field} (exact|prefix|regex)")


def _direct_response(direct: DirectResponse) -> rc_pb2.DirectResponseAction:
    action = rc_pb2.DirectResponseAction(status=direct.status)
    if direct.body is not None:
        if direct.body_is_text:
            action.body.inline_string = direct.body.decode()
        else:
            action.body.inline_bytes = direct.body
    return action


def _cors(policy: CorsPolicy) -> any_pb2.Any:
    """Istio's translateCORSPolicy, wrapped as an optional filter config: a
    gRPC client (which has no CORS filter) ignores it instead of NACKing."""
    config = rc_pb2.CorsPolicy(
        allow_origin_string_match=[_string_matcher("", m) for m in policy.allow_origins],
        allow_methods=",".join(policy.allow_methods),
        allow_headers=",".join(policy.allow_headers),
        expose_headers=",".join(policy.expose_headers),
        max_age=str(policy.max_age) if policy.max_age is not None else "",
    )
    if policy.allow_credentials is not None:
        config.allow_credentials.value = policy.allow_credentials
    config.forward_not_matching_preflights.value = policy.forward_unmatched_preflights
    return pack(rc_pb2.FilterConfig(config=pack(config), is_optional=True))
