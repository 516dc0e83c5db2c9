"""`meshctl describe HOST`: what applies to one service.

Offline from `--config-dir DIR`, or from the running control plane's
`GET /describe?host=` with `--admin-address`. Both produce the same JSON
(`admin.describe.describe_host`); `render_description` is a pure function of
it, checked against golden text.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mesh_control_plane.admin.describe import UnknownHostError, describe_host
from mesh_control_plane.cli.admin_client import AdminError, get_json
from mesh_control_plane.cli.offline import load_offline
from mesh_control_plane.config import ConfigLoadError
from proxyless_mesh.errors import XdsResourceError


def add_parser(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser(
        "describe", help="routes, policies, subsets and endpoints that apply to a host"
    )
    p.add_argument("host", metavar="HOST")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config-dir", type=Path, help="read this directory (offline)")
    source.add_argument("--admin-address", help="HOST:PORT of a running control plane's admin")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds (with --admin-address)")
    p.set_defaults(run=run)


def render_description(d: Mapping[str, Any]) -> str:
    se = d["service_entry"]
    lines = [
        f"host:        {d['host']}",
        f"service:     {se['resource']} ({se['file']}), ports {', '.join(se['ports'])}",
    ]
    vs = d.get("virtual_service")
    if vs is None:
        lines.append("routing:     no VirtualService: every request to the service")
    else:
        lines.append(f"routing:     {vs['resource']} ({vs['file']}){_exported(vs)}")
        for route in vs["routes"]:
            lines.append(f"  route {route['name']}: when {' or '.join(route['match'])}")
            for dest in route["destinations"]:
                subset = f" subset {dest['subset']}" if dest["subset"] else ""
                port = f":{dest['port']}" if dest["port"] else ""
                lines.append(f"    {dest['weight']:>3}% -> {dest['host']}{port}{subset}")
            extras = [
                f"{k} {json.dumps(route[k])}"
                for k in ("timeout", "retries", "fault", "redirect")
                if k in route
            ]
            if extras:
                lines.append(f"    {'; '.join(extras)}")
    for other in d.get("also_routed_by", ()):
        lines.append(f"also:        {other['resource']} ({other['file']}){_exported(other)}")
    if d.get("routed_from"):
        lines.append(f"routed from: {', '.join(d['routed_from'])}")
    dr = d.get("destination_rule")
    if dr is None:
        lines.append("policy:      no DestinationRule")
    else:
        lines.append(f"policy:      {dr['resource']} ({dr['file']})")
        if dr["traffic_policy"]:
            lines.append(f"  traffic policy {json.dumps(dr['traffic_policy'], sort_keys=True)}")
        for subset in dr["subsets"]:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(subset["labels"].items()))
            lines.append(f"  subset {subset['name']}: {labels}")
    policies = d.get("authorization_policies") or []
    if policies:
        for policy in policies:
            lines.append(f"authz:       {policy['resource']} ({policy['action']})")
    else:
        lines.append("authz:       no AuthorizationPolicy selects its workloads")
    for cluster in d["clusters"]:
        lines.append(f"cluster:     {cluster['name']} ({cluster['lb_policy'] or 'missing'})")
        if not cluster["endpoints"]:
            lines.append("  no endpoints")
        for e in cluster["endpoints"]:
            where = f" {e['locality']}" if e["locality"] else ""
            weights = f"priority {e['priority']} weight {e['weight']}"
            lines.append(f"  {e['address']} {e['health']} {weights}{where}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        if args.config_dir is not None:
            offline = load_offline(args.config_dir)
            description = describe_host(
                offline.config, offline.registry, offline.state, args.host, offline.policies
            )
        else:
            query = urllib.parse.urlencode({"host": args.host})
            description = get_json(args.admin_address, f"/describe?{query}", args.timeout)
    except (UnknownHostError, AdminError, XdsResourceError) as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 1
    except ConfigLoadError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"meshctl: cannot read {args.admin_address}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(description, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_description(description))
    return 0


def _exported(vs: Mapping[str, Any]) -> str:
    """`, exported to web, api` when the VirtualService's exportTo narrows it."""
    export_to = vs.get("export_to") or []
    return f", exported to {', '.join(export_to)}" if export_to else ""
