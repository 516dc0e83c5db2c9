"""The outbound decision, free of I/O: authority + request facts -> endpoint.

The httpx and gRPC integrations call `route_request()` then `pick_endpoint()`;
they differ only in how they wait when an authority has never been seen
(block vs await).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Final

from proxyless_mesh.errors import (
    NoClusterError,
    NoHealthyUpstreamError,
    NoRouteError,
    OutsideMeshError,
    UnknownServicePortError,
)
from proxyless_mesh.model import Endpoint
from proxyless_mesh.routing import HeaderLookup, RouteDecision
from proxyless_mesh.runtime._snapshot import MeshSnapshot

ALLOW_ANY: Final = "ALLOW_ANY"
REGISTRY_ONLY: Final = "REGISTRY_ONLY"


class _Unresolved:
    """Marker: the snapshot does not know this authority yet; resolve, then retry."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNRESOLVED"


UNRESOLVED: Final = _Unresolved()


def is_ip_literal(host: str) -> bool:
    """IP literals are never mesh hosts (no service has an IP as its name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def route_request(
    snapshot: MeshSnapshot,
    authority: str,
    path: str,
    method: str,
    lookup: HeaderLookup,
    *,
    outbound_policy: str,
    request: object = None,
) -> RouteDecision | _Unresolved | None:
    """The route decision for this request: a RouteDecision, None to pass it
    through untouched (not a mesh service, outbound policy ALLOW_ANY), or
    UNRESOLVED when the snapshot has not heard of the authority yet, or of
    the cluster its route picked (not yet received, not known absent).

    `request` is handed to the raised errors (httpx wants it on its errors).
    """
    table = snapshot.routes.get(authority)
    if table is None:
        if authority in snapshot.absent or is_ip_literal(authority.rpartition(":")[0]):
            # The workload's Sidecar (outboundTrafficPolicy) overrides the client's own.
            if (snapshot.outbound_policy or outbound_policy) == REGISTRY_ONLY:
                raise OutsideMeshError(
                    f"{authority} is not a mesh service and the outbound policy is "
                    "REGISTRY_ONLY; declare it in a ServiceEntry or allow any",
                    request=request,  # type: ignore[arg-type]
                )
            return None
        return UNRESOLVED
    decision = table.pick(path, method, lookup)
    if decision is None:
        raise NoRouteError(
            f"no route of {authority} matches {method} {path}",
            request=request,  # type: ignore[arg-type]
        )
    if decision.cluster:
        balancer = snapshot.balancers.get(decision.cluster)
        if balancer is None or not balancer.cluster_known:
            if decision.cluster in snapshot.awaited:
                return UNRESOLVED  # on its way: wait as for a new authority
            raise NoClusterError(
                f"{authority}: route {decision.route_name!r} sends to cluster "
                f"{decision.cluster}, which the control plane does not have (a subset no "
                "DestinationRule defines yet?)",
                request=request,  # type: ignore[arg-type]
            )
    return decision


def pick_endpoint(
    snapshot: MeshSnapshot, authority: str, decision: RouteDecision, request: object = None
) -> Endpoint:
    """An endpoint of the decision's cluster, or NoHealthyUpstreamError saying why not."""
    if not decision.cluster:  # as grpcio fails a call on a route with no cluster action
        raise NoHealthyUpstreamError(
            f"{authority}: route {decision.route_name!r} answers by itself (a redirect or a "
            "direct response), which a gRPC call cannot take",
            request=request,  # type: ignore[arg-type]
        )
    balancer = snapshot.balancers.get(decision.cluster)
    if balancer is None:
        raise NoHealthyUpstreamError(
            f"{authority}: route {decision.route_name!r} names cluster {decision.cluster} "
            "which this client does not have yet",
            request=request,  # type: ignore[arg-type]
        )
    endpoint = balancer.pick()
    if endpoint is None:
        raise NoHealthyUpstreamError(
            f"{authority}: no healthy upstream in cluster {decision.cluster}: {balancer.reason}",
            request=request,  # type: ignore[arg-type]
        )
    return endpoint


def passthrough_failure(
    snapshot: MeshSnapshot, authority: str, error: BaseException, request: object = None
) -> UnknownServicePortError | None:
    """For a passed-through request that failed: when DNS does not know the
    host of an authority the control plane said is not a mesh service, the
    typed error naming the host and the mesh ports of it this client knows
    (a mesh host on the wrong port); else None (the caller re-raises)."""
    if authority not in snapshot.absent or not _is_name_resolution_failure(error):
        return None
    host, _, port = authority.rpartition(":")
    ports = tuple(
        sorted(int(p) for h, _, p in (a.rpartition(":") for a in snapshot.routes) if h == host)
    )
    known = (
        f"the mesh serves {host} on port(s) {', '.join(map(str, ports))}"
        if ports
        else f"no port of {host} is known to this client (`meshctl describe {host}` lists them)"
    )
    return UnknownServicePortError(
        f"{authority}: the control plane has no service at this host and port, and DNS does "
        f"not know {host} ({error}); {known}",
        host=host,
        port=port,
        mesh_ports=ports,
        request=request,
    )


def _is_name_resolution_failure(error: BaseException | None) -> bool:
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, socket.gaierror):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False
