"""Whether each Gateway's Envoy has taken its configuration, from live ACKs:
the Gateway API's `Programmed` condition (config/gateway_api_status.py).

A gateway node (`meshctl gateway run --name NAME --namespace NS` names it
``router~<ip>~NAME.NS~...``) is programmed when it ACKed the version of its
listeners (LDS) and route tables (RDS, when it asked for any) the control plane
last sent it. Read from the clients' `/status` form, so `meshctl gateway status
--admin-address` and the Lease holder on Kubernetes reach the same verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mesh_control_plane.config.gateway_api_status import Programmed, worst
from mesh_control_plane.translate.node import ROUTER_ID_PREFIX
from mesh_control_plane.translate.resources import LISTENER, ROUTE
from mesh_control_plane.xds.clients import short_type_name

_TYPES = (short_type_name(LISTENER), short_type_name(ROUTE))


def programmed_gateways(clients: Iterable[Mapping[str, Any]]) -> dict[str, Programmed]:
    """ "ns/name" -> Programmed of every Gateway with a connected Envoy."""
    found: dict[str, Programmed] = {}
    for client in clients:
        node_id = str(client.get("node_id", ""))
        parts = node_id.split("~")
        if not node_id.startswith(ROUTER_ID_PREFIX) or len(parts) < 3:
            continue
        name, _, namespace = parts[2].partition(".")
        verdict = _node_verdict(client.get("types") or {})
        worst({f"{namespace}/{name}": verdict}, found)
    return found


def _node_verdict(types: Mapping[str, Any]) -> Programmed:
    if not types.get(_TYPES[0], {}).get("sent"):
        return Programmed("False", "Pending", "its Envoy has not been sent listeners yet")
    for short in _TYPES:
        state = types.get(short) or {}
        sent = state.get("sent")
        if not sent:
            continue  # no route tables asked for (a TCP or TLS passthrough gateway)
        # Set by a NACK of the latest response, cleared by an ACK (its value is
        # the client's version_info: over SotW the last version it accepted).
        if state.get("nacked") is not None:
            error = state.get("error") or "no reason given"
            return Programmed("False", "Invalid", f"its Envoy rejected {short} {sent}: {error}")
        if state.get("acked") != sent:
            return Programmed("False", "Pending", f"its Envoy has not ACKed {short} {sent} yet")
    return Programmed("True", "Programmed", "its Envoy ACKed the current listeners and routes")
