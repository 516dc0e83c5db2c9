"""`meshctl simulate METHOD URL`: where one request would go.

Offline from `--config-dir DIR`, or from the running control plane's
`GET /simulate` with `--admin-address` (its live config and registry, so
self-registered workloads count). Both compute the same JSON
(`admin.simulate.simulate`: the library's own routing and policy code);
`render_simulation` is a pure function of it, checked against golden text.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from mesh_control_plane.admin.simulate import simulate
from mesh_control_plane.cli.admin_client import AdminError, get_json
from mesh_control_plane.cli.offline import load_offline
from mesh_control_plane.config import ConfigLoadError
from proxyless_mesh.errors import XdsResourceError

__all__ = ["add_parser", "render_simulation", "simulate", "simulate_query"]


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
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="K=V",
        help="the caller's workload label, for its Sidecar (repeat; with --from)",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config-dir", type=Path, help="directory of Istio YAML (offline)")
    source.add_argument("--admin-address", help="HOST:PORT of a running control plane's admin")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds (with --admin-address)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run)


def simulate_query(
    method: str,
    url: str,
    headers: Sequence[tuple[str, str]],
    source: str | None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """The admin target `/simulate?...` for one request (headers as a JSON list
    of pairs, labels as a JSON object: the admin endpoint reads each parameter once)."""
    params = {"method": method, "url": url, "headers": json.dumps([list(h) for h in headers])}
    if source is not None:
        params["from"] = source
    if labels:
        params["labels"] = json.dumps(dict(labels))
    return f"/simulate?{urllib.parse.urlencode(params)}"


def render_simulation(result: Mapping[str, Any]) -> str:
    lines = [f"request:   {result['request']}", f"authority: {result['authority']}"]
    if "sidecar" in result:
        lines.append(f"sidecar:   {result['sidecar']}")
    if "route" in result:
        lines.append(f"route:     {result['route']}")
    lines.append(f"outcome:   {result['outcome']}")
    if result.get("timeout") is not None:
        lines.append(f"timeout:   {result['timeout']:g}s")
    lines += [f"effect:    {effect}" for effect in result.get("effects", ())]
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
    labels = {}
    for item in args.label:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"meshctl: --label wants K=V, got {item!r}", file=sys.stderr)
            return 2
        labels[name.strip()] = value
    if labels and args.source is None:
        print("meshctl: --label describes the caller: give --from NS/SA too", file=sys.stderr)
        return 2
    if args.source is not None and args.source.count("/") != 1:
        print(
            f"meshctl: --from wants NAMESPACE/SERVICE_ACCOUNT, got {args.source!r}", file=sys.stderr
        )
        return 2
    try:
        if args.config_dir is not None:
            offline = load_offline(args.config_dir)
            result = simulate(offline, args.method, args.url, headers, args.source, labels)
        else:
            target = simulate_query(args.method, args.url, headers, args.source, labels)
            result = get_json(args.admin_address, target, args.timeout)
    except ConfigLoadError as exc:
        print(f"meshctl: {exc}\n(run `meshctl analyze {args.config_dir}`)", file=sys.stderr)
        return 1
    except (XdsResourceError, httpx.InvalidURL, AdminError) as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"meshctl: cannot read {args.admin_address}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_simulation(result))
    return 0
