"""`meshctl gateway status DIR [--admin-address A]`: Gateway API status
conditions of the Gateways and routes in a config directory,
as the Gateway API specifies them (on Kubernetes, kube/gateway_status.py writes them).

- Gateway: Accepted (it loaded), Programmed (True when the Envoy of
  ``meshctl gateway run --name <name> --namespace <ns>``, connected to the
  control plane at ``--admin-address``, ACKed the listeners and routes last
  sent to it; False: NoResources with no such Envoy, Pending before its ACK,
  Invalid when it NACKed, with its error; Unknown without an address; see
  xds/gateway_acks.py).
- Route (HTTPRoute, GRPCRoute, TLSRoute, TCPRoute), per parent: Accepted (the
  parent Gateway exists and a listener admits the route by allowedRoutes,
  else NotAllowedByListeners, and one of its hostnames, else
  NoMatchingListenerHostname: config/gateway_api_attach.py; a Service parent,
  GAMMA, exists or the config would not load), ResolvedRefs (False with
  reason BackendNotFound or RefNotPermitted when a backend names no declared
  Service or one of another namespace no ReferenceGrant permits: see
  config/gateway_api_refs.py).
- Listener: how many routes are attached to it (attachedRoutes); when
  `allowedRoutes.kinds` names a kind it cannot serve, ResolvedRefs=False
  (InvalidRouteKinds) and the supportedKinds it serves.
`conditions()` is pure; the command only loads and prints.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mesh_control_plane.cli.admin_client import AdminError, get_json
from mesh_control_plane.config import ConfigLoadError, load_config_dir
from mesh_control_plane.config.gateway_api_attach import attached_routes
from mesh_control_plane.config.gateway_api_status import (
    Condition,
    conditions,
    listener_resolved_refs,
)
from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.config.parse_gateway_api import GATEWAY_NAME_LABEL
from mesh_control_plane.xds.gateway_acks import programmed_gateways

__all__ = ["Condition", "conditions", "programmed_gateways", "render", "run"]


def add_status_parser(actions: Any) -> None:
    p: argparse.ArgumentParser = actions.add_parser(
        "status", help="Gateway API status conditions of a config directory"
    )
    p.add_argument("config_dir", type=Path, metavar="DIR")
    p.add_argument("--admin-address", help="the running control plane, for Programmed")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config_dir(args.config_dir)
    except ConfigLoadError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 1
    programmed = None
    if args.admin_address:
        try:
            status = get_json(args.admin_address, "/status")
            programmed = programmed_gateways(status.get("clients", []))
        except (OSError, AdminError, ValueError) as exc:
            print(f"meshctl: cannot read {args.admin_address}/status: {exc}", file=sys.stderr)
            return 1
    print(render(conditions(config, programmed), listener_lines(config)), end="")
    return 0


def listener_lines(config: MeshConfig) -> list[str]:
    """Each Gateway API listener with the routes attached to it, and its
    ResolvedRefs condition when False (a route kind it cannot serve)."""
    lines = []
    for g in config.gateways:
        if GATEWAY_NAME_LABEL not in g.selector:
            continue
        for s in g.servers:
            head = f"Gateway {g.ref} listener {s.name}: "
            lines.append(f"{head}attachedRoutes={attached_routes(g, s, config.virtual_services)}")
            status, reason, message = listener_resolved_refs(s)
            if status != "True":
                kinds = ", ".join(s.route_kinds or ()) or "none"
                lines.append(f"{head}ResolvedRefs={status} ({reason}): {message}")
                lines.append(f"{head}supportedKinds={kinds}")
    return lines


def render(found: Iterable[Condition], listeners: Iterable[str] = ()) -> str:
    lines = [str(c) for c in found] + list(listeners)
    return "\n".join(lines) + "\n" if lines else "no Gateway API resources\n"
