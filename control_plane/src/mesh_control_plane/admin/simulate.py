"""`simulate`: where one request would go, as JSON-able data.

Shared by `meshctl simulate` (offline, from a directory) and the admin
endpoint `GET /simulate` (the running config and registry), as `describe` is.
The config is translated for a library client and decoded by the library's
decoders; the library builds its routing snapshot from that; the request is
matched by the library's compiled routes with the same inputs the httpx
transport uses (`url_parts`, the request's headers). So simulate cannot
disagree with the transport about the route, the clusters and their weights,
or the endpoint set. Which AuthorizationPolicies select the destination
workloads, and whether the library's policy engine would allow the request
from `NS/SA`, is reported beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from mesh_control_plane.admin.describe import policies_of
from mesh_control_plane.admin.mesh_view import mesh_view
from mesh_control_plane.admin.simulate_effects import abort_outcome, route_effects
from mesh_control_plane.admin.simulate_scope import (
    caller_sidecar,
    caller_state,
    hidden_outcome,
    outside_outcome,
)
from mesh_control_plane.config.authorization import (
    authorization_policies_to_rbac,
    is_dry_run,
    selects_workload,
)
from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.registry import Registry
from proxyless_mesh.integrations import url_parts
from proxyless_mesh.policy import InboundRequest, PolicySet, ShadowResult
from proxyless_mesh.snapshot import build_snapshot
from proxyless_mesh.xds_client import XdsState

__all__ = ["ConfigView", "simulate"]


@dataclass(frozen=True)
class ConfigView:
    """A config and registry as the diagnostics see them: with what a library
    client would hold (translated, decoded) and the AuthorizationPolicies as
    the policy engine reads them."""

    config: MeshConfig
    registry: Registry
    state: XdsState
    policies: tuple[dict[str, Any], ...]

    @classmethod
    def of(cls, config: MeshConfig, registry: Registry) -> ConfigView:
        """Raises XdsResourceError when the library would NACK the translation."""
        return cls(config, registry, mesh_view(config, registry), tuple(policies_of(config)))

    @property
    def trust_domain(self) -> str:
        settings = getattr(self.config, "settings", None)
        return str(getattr(settings, "trust_domain", "cluster.local"))


def simulate(
    offline: ConfigView,
    method: str,
    url: str,
    headers: Sequence[tuple[str, str]] = (),
    source: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The decision for one request, as JSON-able data; with `source` (and
    the caller's `labels`) as that caller is sent the config (exportTo, Sidecar)."""
    request = httpx.Request(method.upper(), url, headers=list(headers))
    authority, path = url_parts(request.url)
    result: dict[str, Any] = {"request": f"{request.method} {url}", "authority": authority}
    state = offline.state
    config = offline.config
    sidecar = None
    default = config.settings.outbound_policy if isinstance(config, MeshConfig) else None
    if source is not None and isinstance(config, MeshConfig):
        namespace = source.partition("/")[0]
        sidecar = caller_sidecar(config, namespace, labels or {})
        if sidecar is not None:
            result["sidecar"] = f"{sidecar.meta.ref} ({sidecar.meta.file})"
        state = caller_state(config, offline.registry, namespace, labels or {})
        if authority in offline.state.listeners and authority not in state.listeners:
            result["outcome"] = hidden_outcome(sidecar, namespace, default)
            return result
    snapshot = build_snapshot(state)
    table = snapshot.routes.get(authority)
    if table is None:
        host = authority.rpartition(":")[0]
        declared = next(
            (se for se in getattr(offline.config, "passthrough_entries", ()) if host in se.hosts),
            None,
        )
        if declared is not None:
            result["outcome"] = (
                f"passed through to {authority} itself ({declared.meta.ref}, resolution "
                f"{declared.resolution}, {declared.location}: no mesh mTLS)"
            )
            return result
        result["outcome"] = f"not a mesh service: {outside_outcome(sidecar, default)}"
        return result
    matched = table.first_match(path, request.method, request.headers.get)
    if matched is None or not matched.forwards:
        result["outcome"] = f"no route of {authority} matches {request.method} {path} (NR)"
        return result
    result["route"] = matched.name
    route = matched.choices[0].route
    effects = route_effects(route) if route is not None else []
    if effects:
        result["effects"] = effects
    aborted = abort_outcome(route) if route is not None else None
    if aborted is not None:
        result["outcome"] = aborted
        return result
    if not matched.clusters and route is not None and route.direct_response is not None:
        result["outcome"] = (
            f"direct response {route.direct_response.status} (answered by the mesh, no upstream)"
        )
        return result
    if not matched.clusters:  # forwards with no cluster: the route answers a redirect
        result["outcome"] = "redirect (answered by the mesh, no upstream)"
        return result
    live = [(c, w) for c, w in matched.clusters if w > 0]
    total = sum(w for _, w in live)
    result["outcome"] = "routed"
    result["timeout"] = matched.timeout
    result["clusters"] = [
        {
            "name": name,
            "percent": round(100 * weight / total, 1),
            "endpoints": _endpoints(snapshot.balancers.get(name)),
        }
        for name, weight in live
    ]
    result["authorization"] = _authorization(offline, request, live, source)
    return result


def _endpoints(balancer: Any) -> list[dict[str, str]]:
    if balancer is None:
        return []
    return [
        {"address": f"{e.address}:{e.port}", "health": e.health.name}
        for e in sorted(balancer.endpoints, key=lambda e: (e.address, e.port))
    ]


def _authorization(
    offline: ConfigView,
    request: httpx.Request,
    clusters: Sequence[tuple[str, int]],
    source: str | None,
) -> list[str]:
    """One verdict per destination service: the policies that select its
    workloads, evaluated by the library's engine for the caller `source`."""
    if not hasattr(offline.config, "authorization_policies"):
        return ["not evaluated: this config loader does not read AuthorizationPolicy"]
    principal = None
    if source is not None:
        namespace, _, account = source.partition("/")
        principal = f"spiffe://{offline.trust_domain}/ns/{namespace}/sa/{account}"
    verdicts = []
    for cluster, _ in clusters:
        host = cluster.rsplit("|", 1)[-1]
        service = next((se for se in offline.config.service_entries if host in se.hosts), None)
        if service is None:
            continue
        label_sets = [dict(i.labels) for i in offline.registry.get(host, ())] or [{}]
        selected = [
            p
            for p in offline.policies
            if any(
                selects_workload(p, service.meta.namespace, ls, services=service.hosts)
                for ls in label_sets
            )
        ]
        if not selected:
            verdicts.append(f"{cluster}: ALLOW (no AuthorizationPolicy applies)")
            continue
        names = ", ".join(
            f"{p['metadata']['namespace']}/{p['metadata']['name']}"
            + (" (dry-run)" if is_dry_run(p) else "")
            for p in selected
        )
        providers = dict(getattr(offline.config, "extension_providers", ()))
        policies = PolicySet(authorization_policies_to_rbac(selected, providers))
        inbound = InboundRequest(
            method=request.method,
            target=request.url.raw_path,
            headers={k.lower(): v for k, v in request.headers.items()},
            peer_principal=principal,
        )
        decision = policies.check(inbound)
        custom = ""
        if decision.ext_authz is not None:  # Istio's order: the authorizer, then DENY/ALLOW
            name = next(n for n, p in providers.items() if p == decision.ext_authz)
            custom = (
                f"CUSTOM by {decision.policy}: extension provider {name} "
                f"({decision.ext_authz.target}) decides first; if it allows: "
            )
            decision = policies.check(inbound, after_custom=True)
        if decision.allowed:
            verdict = f"{cluster}: ALLOW by {names}"
        else:
            why = f"{decision.reason}" + (f" ({decision.policy})" if decision.policy else "")
            verdict = f"{cluster}: DENY {decision.status}: {why}; policies {names}"
        if custom:
            verdict = verdict.replace(f"{cluster}: ", f"{cluster}: {custom}", 1)
        verdicts.append(verdict + "".join(_dry_run(r) for r in decision.shadow))
    return verdicts


def _dry_run(result: ShadowResult) -> str:
    """A dry-run engine's verdict, which never changed the decision above."""
    action = result.prefix.removeprefix("istio_dry_run_").rstrip("_").upper()
    by = f" by {result.effective_policy_id}" if result.effective_policy_id else ""
    return f"; dry-run {action} policies would have {result.engine_result} it{by}"
