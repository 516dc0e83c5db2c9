"""`describe`: everything that applies to one host, as JSON-able data.

Which ServiceEntry declares it, which VirtualService routes it (and which
others send traffic to it), which DestinationRule shapes it, which
AuthorizationPolicies select its workloads, and, per port and subset, the
endpoints a library client would receive and their health. Endpoints come
from `mesh_view` (translated and decoded), so subsets list exactly the
endpoints the translator selected for them.

Shared by `meshctl describe` (offline, from a directory) and the admin
endpoint `GET /describe?host=` (the running config).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from mesh_control_plane.config.authorization import selects_workload
from mesh_control_plane.config.model import (
    Destination,
    HTTPMatchRequest,
    HTTPRoute,
    MeshConfig,
    Meta,
    ServiceEntry,
)
from mesh_control_plane.registry import Registry
from mesh_control_plane.translate import cluster_name
from proxyless_mesh.xds_client import XdsState

__all__ = ["UnknownHostError", "describe_host", "match_text", "policies_of"]


class UnknownHostError(LookupError):
    """No ServiceEntry declares the host."""


def describe_host(
    config: MeshConfig,
    registry: Registry,
    state: XdsState,
    host: str,
    policies: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The description of `host`; UnknownHostError when it is not a mesh host.
    `policies` are raw AuthorizationPolicy documents (none when unsupported)."""
    service = next((se for se in config.service_entries if host in se.hosts), None)
    if service is None:
        passthrough = next((se for se in config.passthrough_entries if host in se.hosts), None)
        if passthrough is not None:
            raise UnknownHostError(
                f"{host!r} is declared by {passthrough.meta.ref} ({passthrough.meta.file}) with "
                f"resolution {passthrough.resolution}: requests pass through to the host "
                "itself; nothing is routed or balanced for it"
            )
        known = ", ".join(sorted(h for se in config.service_entries for h in se.hosts))
        raise UnknownHostError(f"no ServiceEntry declares host {host!r} (hosts: {known or 'none'})")
    vs = next((v for v in config.virtual_services if host in v.hosts), None)
    dr = next((d for d in config.destination_rules if d.host == host), None)
    subsets = [s.name for s in dr.subsets] if dr else []
    return {
        "host": host,
        "service_entry": {
            **_where(service.meta),
            "ports": [f"{p.number}/{p.protocol}" for p in service.ports],
            "location": service.location,
            "resolution": service.resolution,
        },
        "virtual_service": None
        if vs is None
        else {
            **_where(vs.meta),
            "routes": [_route(vs.meta, i, r) for i, r in enumerate(vs.http)],
            "export_to": list(vs.export_to),
        },
        # Other mesh VirtualServices of the host: exported to other namespaces.
        "also_routed_by": [
            {**_where(v.meta), "export_to": list(v.export_to)}
            for v in config.virtual_services
            if v is not vs and v.for_mesh and host in v.hosts
        ],
        "routed_from": sorted(
            _where(v.meta)["resource"]
            for v in config.virtual_services
            if v is not vs and any(d.host == host for d in _destinations(v.http))
        ),
        "destination_rule": None
        if dr is None
        else {
            **_where(dr.meta),
            "traffic_policy": _compact(dataclasses.asdict(dr.traffic_policy))
            if dr.traffic_policy
            else {},
            "subsets": [{"name": s.name, "labels": dict(s.labels)} for s in dr.subsets],
        },
        "authorization_policies": _policies(service, registry.get(host, ()), policies),
        "clusters": [
            _cluster(state, cluster_name(host, port.number, subset), subset)
            for port in service.ports
            for subset in ["", *subsets]
        ],
    }


def policies_of(config: MeshConfig) -> list[dict[str, Any]]:
    """The config's AuthorizationPolicies as the library's policy translator
    reads them; none when this loader does not read AuthorizationPolicy."""
    return [p.resource() for p in getattr(config, "authorization_policies", ())]


def match_text(match: HTTPMatchRequest) -> str:
    """One Istio match as a line, e.g. `uri prefix /api, header x-user exact bob`."""
    parts = []
    if match.uri is not None:
        case = " (ignore case)" if match.ignore_uri_case else ""
        parts.append(f"uri {match.uri.kind} {match.uri.value}{case}")
    if match.method is not None:
        parts.append(f"method {match.method.kind} {match.method.value}")
    parts += [f"header {k} {m.kind} {m.value}" for k, m in sorted(match.headers.items())]
    return ", ".join(parts) or "any request"


def _where(meta: Meta) -> dict[str, str]:
    return {"resource": meta.ref, "file": meta.file}


def _destinations(routes: Sequence[HTTPRoute]) -> list[Destination]:
    return [d.destination for r in routes for d in r.route] + [
        m.destination for r in routes for m in r.mirrors
    ]


def _route(meta: Meta, index: int, route: HTTPRoute) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": f"{meta.namespace}/{meta.name}/{route.name or index}",
        "match": [match_text(m) for m in route.match] or ["any request"],
        "destinations": [
            {
                "host": d.destination.host,
                "subset": d.destination.subset or "",
                "port": d.destination.port,
                "weight": d.weight if len(route.route) > 1 else 100,
            }
            for d in route.route
        ],
    }
    if route.timeout is not None:
        out["timeout"] = route.timeout
    if route.retries is not None:
        out["retries"] = route.retries.attempts
    if route.redirect is not None:
        out["redirect"] = _compact(dataclasses.asdict(route.redirect))
    if route.fault is not None:
        out["fault"] = _compact(dataclasses.asdict(route.fault))
    return out


def _cluster(state: XdsState, name: str, subset: str) -> dict[str, Any]:
    cluster = state.clusters.get(name)
    assignment = state.assignments.get(cluster.eds_service_name) if cluster else None
    endpoints = [
        {
            "address": f"{e.address}:{e.port}",
            "health": e.health.name,
            "locality": "/".join(
                p for p in (le.locality.region, le.locality.zone, le.locality.sub_zone) if p
            ),
            "priority": le.priority,
            "weight": e.weight,
        }
        for le in (assignment.localities if assignment else ())
        for e in le.endpoints
    ]
    return {
        "name": name,
        "subset": subset,
        "lb_policy": cluster.lb_policy.value if cluster else "",
        "endpoints": sorted(endpoints, key=lambda e: (e["priority"], e["address"])),
    }


def _policies(
    service: ServiceEntry, instances: Sequence[Any], policies: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    namespace = service.meta.namespace
    label_sets = [dict(i.labels) for i in instances] or [{}]
    out = []
    for policy in policies:
        hosts = service.hosts
        if any(selects_workload(policy, namespace, ls, services=hosts) for ls in label_sets):
            meta = policy.get("metadata") or {}
            spec = policy.get("spec") or {}
            out.append(
                {
                    "resource": f"AuthorizationPolicy {meta.get('namespace', 'default')}/"
                    f"{meta.get('name', '')}",
                    "action": str(spec.get("action", "ALLOW")),
                }
            )
            if spec.get("action") == "CUSTOM":
                out[-1]["provider"] = str((spec.get("provider") or {}).get("name", ""))
    return out


def _compact(value: Any) -> Any:
    """asdict() output without the fields nobody wrote (None, empty)."""
    if isinstance(value, dict):
        items = ((k, _compact(v)) for k, v in value.items())
        return {k: v for k, v in items if v not in (None, {}, [], (), "", False)}
    if isinstance(value, list | tuple):
        return [_compact(v) for v in value]
    return value
