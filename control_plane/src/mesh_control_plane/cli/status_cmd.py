"""`meshctl status`: which clients are connected and what each has accepted.

Fetching and rendering are separate: `render_status` is a pure function of the
admin `/status` JSON, checked against golden text.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from mesh_control_plane.app import split_address

TYPE_COLUMNS = ("LDS", "RDS", "CDS", "EDS")


def add_parser(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser(
        "status", help="show connected xDS clients and what they ACKed or NACKed"
    )
    p.add_argument("--admin-address", default="127.0.0.1:15014", help="HOST:PORT of admin")
    p.add_argument("--json", action="store_true", help="print the raw /status JSON")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds")
    p.set_defaults(run=run)


def fetch_status(admin_address: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET /status; OSError or ValueError when it cannot be had."""
    host, port = split_address(admin_address)
    conn = http.client.HTTPConnection(host.strip("[]"), port, timeout=timeout)
    try:
        conn.request("GET", "/status")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise ValueError(f"GET /status answered {response.status}: {body[:200]!r}")
    payload: dict[str, Any] = json.loads(body)
    return payload


def _cell(state: Mapping[str, Any] | None) -> str:
    if state is None:
        return "-"
    if state.get("nacked") is not None:
        error = " ".join(str(state.get("error") or "").split())
        return f"NACKED {state['nacked']}: {error}"
    if state.get("acked"):
        return str(state["acked"])
    return f"(sent {state.get('sent') or '-'})"


def _identity(client: Mapping[str, Any]) -> str:
    """The SPIFFE ID the client's node claims, else `ns/sa` if only those are known."""
    if client.get("spiffe"):
        return str(client["spiffe"])
    ns, sa = client.get("namespace"), client.get("service_account")
    return f"{ns}/{sa}" if ns and sa else ""


def _kind(client: Mapping[str, Any]) -> str:
    """The client kind, marked when its stream speaks Delta xDS."""
    kind = str(client.get("kind") or "?")
    return f"{kind} (delta)" if client.get("protocol") == "delta" else kind


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def render_status(payload: Mapping[str, Any]) -> str:
    """The text `meshctl status` prints for a `/status` payload."""
    clients: Sequence[Mapping[str, Any]] = payload.get("clients", [])
    lines = [f"config version: {payload.get('version', '?')}"]
    extra = sorted(
        {t for c in clients for t in c.get("types", {}) if t not in TYPE_COLUMNS},
    )
    columns = [*TYPE_COLUMNS, *extra]
    # The identity column appears once some client names one (older control
    # planes and bare clients send none: their output is unchanged).
    with_identity = any(_identity(c) for c in clients)
    if clients:
        rows = [["NODE ID", "KIND", *(["IDENTITY"] if with_identity else []), *columns]]
        for client in clients:
            types = client.get("types", {})
            rows.append(
                [
                    str(client.get("node_id") or "?"),
                    _kind(client),
                    *([_identity(client) or "-"] if with_identity else []),
                    *(_cell(types.get(t)) for t in columns),
                ]
            )
        lines += _table(rows)
    else:
        lines.append("no clients connected")
    errors: Sequence[str] = payload.get("config_errors", [])
    if errors:
        lines.append("config errors (serving the last good config, version above):")
        lines += [f"  {e}" for e in errors]
    warnings: Sequence[str] = payload.get("config_warnings", [])
    if warnings:
        lines.append("config warnings (the config in use loads, but):")
        lines += [f"  {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        payload = fetch_status(args.admin_address, args.timeout)
    except (OSError, ValueError) as exc:
        print(f"meshctl: cannot read status from {args.admin_address}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_status(payload))
    return 0
