"""`meshctl config-dump NODE`: the xDS config one client holds.

Two sources, one rendering. With `--csds HOST:PORT`, the client itself says
what it holds (its CSDS endpoint: `Mesh(admin_address=...)`, or any grpcio
process with CSDS enabled): the last good value of each resource, its
version and ACKED / NACKED / REQUESTED / DOES_NOT_EXIST. Otherwise the control
plane's record of what it last sent that node (`GET /config_dump?node=`), and
whether it was ACKed or NACKed. Both become the same rows (`Entry`), and
`render_dump` is a pure function of them, checked against golden text.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
from envoy.admin.v3 import config_dump_shared_pb2 as shared_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.protobuf import json_format

from mesh_control_plane.cli.admin_client import AdminError, get_json
from mesh_control_plane.xds.clients import short_type_name


@dataclass(frozen=True)
class Entry:
    """One resource a client holds (or was sent)."""

    type: str  # LDS | RDS | CDS | EDS | other message name
    name: str
    version: str
    status: str  # ACKED | NACKED | REQUESTED | DOES_NOT_EXIST | SENT (not yet answered)
    error: str = ""
    resource: Mapping[str, Any] = field(default_factory=dict)


def add_parser(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser(
        "config-dump", help="the xDS config a client holds (from its CSDS or the control plane)"
    )
    p.add_argument("node", metavar="NODE", help="the client's node id")
    p.add_argument("--admin-address", default="127.0.0.1:15014", help="control plane admin")
    p.add_argument("--csds", metavar="HOST:PORT", help="ask the client's own CSDS endpoint")
    p.add_argument("--json", action="store_true", help="print every entry with its resource")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds")
    p.set_defaults(run=run)


def entries_from_csds(response: Any) -> tuple[str, list[Entry]]:
    """(node id, entries) of a ClientStatusResponse's first ClientConfig."""
    if not response.config:
        return "", []
    config = response.config[0]
    entries = []
    for item in config.generic_xds_configs:
        resource: dict[str, Any] = {}
        if item.HasField("xds_config"):
            resource = json_format.MessageToDict(item.xds_config, preserving_proto_field_name=True)
        entries.append(
            Entry(
                type=short_type_name(item.type_url),
                name=item.name,
                version=item.version_info,
                status=shared_pb2.ClientResourceStatus.Name(item.client_status),
                error=_error(item.error_state.details, item.error_state.version_info),
                resource=resource,
            )
        )
    return config.node.id, entries


def entries_from_control_plane(payload: Mapping[str, Any]) -> list[Entry]:
    """Entries from `/config_dump?node=` (every stream of that node)."""
    entries = []
    for stream in payload.get("streams", []):
        for type_name, state in sorted(stream.get("types", {}).items()):
            if state.get("nacked") is not None:
                status = "NACKED"
            elif state.get("acked") and state.get("acked") == state.get("sent"):
                status = "ACKED"
            else:
                status = "SENT"
            error = _error(state.get("error") or "", state.get("nacked") or "")
            for name, resource in sorted(state.get("resources", {}).items()):
                entries.append(
                    Entry(type_name, name, str(state.get("sent", "")), status, error, resource)
                )
    return entries


def render_dump(node: str, source: str, entries: Sequence[Entry]) -> str:
    lines = [f"node {node} (from {source})"]
    if not entries:
        lines.append("no resources")
        return "\n".join(lines) + "\n"
    rows = [["TYPE", "NAME", "VERSION", "STATUS", "ERROR"]]
    rows += [[e.type, e.name, e.version or "-", e.status, e.error] for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def fetch_csds(address: str, timeout: float) -> Any:
    with grpc.insecure_channel(address) as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        return stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=timeout)


def run(args: argparse.Namespace) -> int:
    try:
        if args.csds:
            source = f"CSDS at {args.csds}"
            node, entries = entries_from_csds(fetch_csds(args.csds, args.timeout))
            if node != args.node:
                print(f"meshctl: {args.csds} is node {node!r}, not {args.node!r}", file=sys.stderr)
                return 1
        else:
            source = f"control plane at {args.admin_address}"
            query = urllib.parse.urlencode({"node": args.node})
            entries = entries_from_control_plane(
                get_json(args.admin_address, f"/config_dump?{query}", args.timeout)
            )
    except grpc.RpcError as exc:
        print(f"meshctl: CSDS at {args.csds} failed: {exc.code().name}", file=sys.stderr)
        return 1
    except AdminError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"meshctl: cannot read {args.admin_address}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        doc = {"node": args.node, "source": source, "entries": [asdict(e) for e in entries]}
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=dict) + "\n")
    else:
        sys.stdout.write(render_dump(args.node, source, entries))
    return 0


def _error(details: str, version: str) -> str:
    if not details:
        return ""
    text = " ".join(details.split())
    return f"(rejected version {version}) {text}" if version else text
