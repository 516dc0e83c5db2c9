"""`build_snapshot`: the xDS client's state -> the `MeshSnapshot` the data path reads.

Each xDS update builds a new `MeshSnapshot` from the client's `XdsState`
(compiling routes, building pickers) and the mesh swaps one reference. It
lives here, beside the composition root that owns the xDS client, rather
than beside the type: the integrations read `MeshSnapshot` and must not
import the xDS client. `meshctl simulate` calls it offline. Balancers whose
cluster and assignment did not change are carried over, so round-robin
positions (and later, load counters) survive updates.

Inbound: each server listener the mesh watches (`Mesh.serve_inbound`) gets
its compiled `PolicySet` here, built when the listener changed and reused
otherwise, so the authorization middleware only reads a reference per
request and never compiles on the request path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from proxyless_mesh.balancer import ClusterBalancer
from proxyless_mesh.model import OUTBOUND_POLICY_LISTENER
from proxyless_mesh.policy import PathNormalization, PolicyConfigError, PolicySet
from proxyless_mesh.routing import RouteTable, compile_virtual_host, find_virtual_host
from proxyless_mesh.runtime import BalancerSource, InboundPolicy, MeshSnapshot
from proxyless_mesh.xds_client import XdsState

log = logging.getLogger("proxyless_mesh")


def build_snapshot(state: XdsState, previous: MeshSnapshot | None = None) -> MeshSnapshot:
    """A snapshot for `state`, never worse than `previous`.

    The xDS client publishes intermediate states (a route naming a cluster
    whose CDS/EDS has not arrived yet). Such an authority keeps its previous
    routes and balancers until everything it needs is here
    (make-before-break), so a config change never causes a burst of errors.
    Likewise an authority known not to be a mesh service stays so until its
    new listener is complete.
    """
    old_routes = previous.routes if previous else {}
    old_balancers = previous.balancers if previous else {}
    old_sources = previous.sources if previous else {}
    routes: dict[str, RouteTable] = {}
    for name in state.listeners:
        config = state.route_config_for(name)
        if config is not None and state.is_resolved(name):
            vhost = find_virtual_host(config, name)
            routes[name] = (
                compile_virtual_host(vhost)
                if vhost is not None
                else RouteTable(f"{name} (no virtual host)", ())
            )
        elif name in old_routes:
            routes[name] = old_routes[name]
    balancers: dict[str, ClusterBalancer] = {}
    sources: dict[str, BalancerSource] = {}
    wanted = {c for table in routes.values() for c in table.referenced_clusters()}
    for name in sorted(wanted):
        cluster = state.clusters.get(name)
        assignment = state.assignments.get(cluster.eds_service_name) if cluster else None
        source = BalancerSource(cluster, assignment)
        old = old_balancers.get(name)
        if old is not None and (
            old_sources.get(name) == source
            or (name not in state.absent_clusters and (cluster is None or assignment is None))
        ):
            # Unchanged, or its new version is still on the way: keep the old one.
            balancers[name] = old
            sources[name] = old_sources.get(name, source)
            continue
        balancers[name] = ClusterBalancer(cluster, assignment, previous=old, name=name)
        sources[name] = source
    absent = state.absent_listeners
    if previous is not None and previous.absent:
        # A name that was not a mesh service and now appears, but whose
        # routes, clusters or endpoints are still on the way, stays what it
        # was (passed through) until it is whole: never "unknown" in between.
        arriving = {n for n in previous.absent if n in state.listeners and n not in routes}
        if arriving:
            absent = absent | arriving
    awaited = frozenset(
        name for name in wanted if name not in state.clusters and name not in state.absent_clusters
    )
    return MeshSnapshot(
        routes=routes,
        balancers=balancers,
        absent=absent,
        awaited=awaited,
        sources=sources,
        inbound=_inbound_policies(state, previous.inbound if previous else {}),
        outbound_policy=_sidecar_outbound_policy(state),
    )


def _sidecar_outbound_policy(state: XdsState) -> str | None:
    listener = state.listeners.get(OUTBOUND_POLICY_LISTENER)
    return None if listener is None else listener.outbound_policy


def _inbound_policies(
    state: XdsState, previous: Mapping[str, InboundPolicy]
) -> dict[str, InboundPolicy]:
    """A PolicySet per server listener: reused when the listener is unchanged
    (every update rebuilds the snapshot; compiling JWKS and regexes each time
    would be waste), compiled when it changed. A listener whose policy does
    not compile keeps its previous PolicySet (the xDS client's decoder should
    have NACKed it already; this is the last line, never an open door)."""
    out: dict[str, InboundPolicy] = {}
    for name, listener in state.inbound.items():
        old = previous.get(name)
        if old is not None and (old.listener is listener or old.listener == listener):
            out[name] = old
            continue
        try:
            policies = PolicySet(
                listener.rbac, listener.jwt, PathNormalization(listener.path_normalization)
            )
        except (PolicyConfigError, ValueError) as exc:
            log.error("server listener %s: policy not applied, keeping the previous: %s", name, exc)
            if old is not None:
                out[name] = old
            continue
        out[name] = InboundPolicy(listener, policies)
    return out
