"""`meshctl simulate METHOD URL`: where one request would go, offline.

The directory is translated for a library client and decoded by the
library's decoders; the library builds its routing snapshot from that; the
request is matched by the library's compiled routes with the same inputs the
httpx transport uses (`url_parts`, the request's headers). So simulate
cannot disagree with the transport about the route, the clusters and their
weights, or the endpoint set. Which AuthorizationPolicies select the
destination workloads, and whether the library's policy engine would allow
the request from `--from NS/SA`, is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from mesh_control_plane.cli.offline import OfflineConfig, load_offline
from mesh_control_plane.config import ConfigLoadError
from mesh_control_plane.config.authorization import authorization_policies_to_rbac, selects_workload
from proxyless_mesh.errors import XdsResourceError
from proxyless_mesh.integrations import url_parts
from proxyless_mesh.policy import InboundRequest, PolicySet
from proxyless_mesh.snapshot import build_snapshot


def add_parser(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser(
        "simulate", help="show the route, cluster and endpoints a request would take"
    )
    p.add_argument("method", metavar="METHOD")
    p.add_argument("url", metavar="URL", help="e.g. http://reviews.default.mesh:8080/x")
    p.add_argument(
        "--header", action="append", default=[], metavar="K=V", help="request header (repeat)"
    )
    p.add_argument("--from", dest="source", metavar="NS/SA", help="the caller's identity")
    p.add_argument("--config-dir", type=Path, required=True, help="directory of Istio YAML")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run)


def simulate(
    offline: OfflineConfig,
    method: str,
    url: str,
    headers: Sequence[tuple[str, str]] = (),
    source: str | None = None,
) -> dict[str, Any]:
    """The decision for one request, as JSON-able data."""
    request = httpx.Request(method.upper(), url, headers=list(headers))
    authority, path = url_parts(request.url)
    result: dict[str, Any] = {"request": f"{request.method} {url}", "authority": authority}
    snapshot = build_snapshot(offline.state)
    table = snapshot.routes.get(authority)
    if table is None:
        result["outcome"] = "not a mesh service: passed through (ALLOW_ANY) or refused"
        return result
    matched = next(
        (r for r in table.routes if r.matches(path, request.method, request.headers.get)), None
    )
    if matched is None or not matched.forwards:
        result["outcome"] = f"no route of {authority} matches {request.method} {path} (NR)"
        return result
    result["route"] = matched.name
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


def render_simulation(result: Mapping[str, Any]) -> str:
    lines = [f"request:   {result['request']}", f"authority: {result['authority']}"]
    if "route" in result:
        lines.append(f"route:     {result['route']}")
    lines.append(f"outcome:   {result['outcome']}")
    if result.get("timeout") is not None:
        lines.append(f"timeout:   {result['timeout']:g}s")
    for cluster in result.get("clusters", ()):
        lines.append(f"cluster:   {cluster['percent']:g}% {cluster['name']}")
        endpoints = cluster["endpoints"] or [{"address": "(none: fails with UH)", "health": ""}]
        lines += [f"  endpoint {e['address']} {e['health']}".rstrip() for e in endpoints]
    for verdict in result.get("authorization", ()):
        lines.append(f"authz:     {verdict}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    headers = []
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"meshctl: --header wants K=V, got {item!r}", file=sys.stderr)
            return 2
        headers.append((name.strip(), value))
    if args.source is not None and args.source.count("/") != 1:
        print(
            f"meshctl: --from wants NAMESPACE/SERVICE_ACCOUNT, got {args.source!r}", file=sys.stderr
        )
        return 2
    try:
        offline = load_offline(args.config_dir)
        result = simulate(offline, args.method, args.url, headers, args.source)
    except ConfigLoadError as exc:
        print(f"meshctl: {exc}\n(run `meshctl analyze {args.config_dir}`)", file=sys.stderr)
        return 1
    except (XdsResourceError, httpx.InvalidURL) as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_simulation(result))
    return 0


def _endpoints(balancer: Any) -> list[dict[str, str]]:
    if balancer is None:
        return []
    return [
        {"address": f"{e.address}:{e.port}", "health": e.health.name}
        for e in sorted(balancer.endpoints, key=lambda e: (e.address, e.port))
    ]


def _authorization(
    offline: OfflineConfig,
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
            if any(selects_workload(p, service.meta.namespace, ls) for ls in label_sets)
        ]
        if not selected:
            verdicts.append(f"{cluster}: ALLOW (no AuthorizationPolicy applies)")
            continue
        names = ", ".join(f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in selected)
        decision = PolicySet(authorization_policies_to_rbac(selected)).check(
            InboundRequest(
                method=request.method,
                target=request.url.raw_path,
                headers={k.lower(): v for k, v in request.headers.items()},
                peer_principal=principal,
            )
        )
        if decision.allowed:
            verdicts.append(f"{cluster}: ALLOW by {names}")
        else:
            why = f"{decision.reason}" + (f" ({decision.policy})" if decision.policy else "")
            verdicts.append(f"{cluster}: DENY {decision.status}: {why}; policies {names}")
    return verdicts
