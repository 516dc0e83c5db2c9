"""`meshctl proxy run --workload NAME --inbound PORT=APP_PORT`: an Envoy sidecar
for a workload in any language.

The Envoy's node is a "sidecar" of the workload (namespace, service account,
labels, instance IPs): it serves the workload's declared PORT (the one its
ServiceEntry or WorkloadEntry names) with mTLS per PeerAuthentication,
AuthorizationPolicy as RBAC and RequestAuthentication as jwt_authn, and
forwards to the application on 127.0.0.1:APP_PORT in plaintext, with the
caller's SPIFFE ID in ``x-forwarded-client-cert``; outbound, the application
sends plain HTTP to 127.0.0.1:<outbound port> with the service's host, and
Envoy routes it as the library would, in mesh mTLS; TCP to a mesh service goes
to 127.0.0.1:LOCAL_PORT of an `--outbound-tcp HOST:PORT=LOCAL_PORT` listener.
A declared TCP port is served like an HTTP one, with mTLS per
PeerAuthentication and AuthorizationPolicy's TCP part as network RBAC
(translate/sidecar_tcp.py). Identity and SDS as for gateways
(gateway/agent.py).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mesh_control_plane.cli.agent_args import add_agent_arguments, parse_pairs, run_agent_command
from mesh_control_plane.gateway.bootstrap import ProxyNode
from mesh_control_plane.translate.node import tcp_targets


def add_parser(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser("proxy", help="Envoy sidecars")
    actions = p.add_subparsers(dest="proxy_command", required=True, metavar="ACTION")
    run_p = actions.add_parser("run", help="run an Envoy sidecar beside a workload")
    run_p.add_argument("--workload", required=True, help="the workload's name (node and pod)")
    add_agent_arguments(run_p)
    run_p.add_argument(
        "--inbound",
        action="append",
        default=[],
        metavar="PORT=APP_PORT",
        help="serve the declared PORT, forward to the application's APP_PORT (repeatable)",
    )
    run_p.add_argument(
        "--instance-ip",
        action="append",
        default=[],
        help="the workload's address(es) as its ServiceEntry/WorkloadEntry names them",
    )
    run_p.add_argument("--outbound-port", type=int, default=15001, help="0: a free port")
    run_p.add_argument(
        "--outbound-tcp",
        action="append",
        default=[],
        metavar="HOST:PORT=LOCAL_PORT",
        help="proxy TCP from 127.0.0.1:LOCAL_PORT (0: a free port) to the mesh service "
        "HOST:PORT in mesh mTLS (repeatable)",
    )
    run_p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    labels = parse_pairs(args.label, "--label")
    ports = parse_pairs(args.inbound, "--inbound")
    if labels is None or ports is None:
        return 2
    if not all(p.isdigit() and a.isdigit() for p, a in ports):
        print("meshctl: --inbound takes PORT=APP_PORT numbers", file=sys.stderr)
        return 2
    try:
        outbound_tcp = tcp_targets(",".join(args.outbound_tcp), args.workload)
    except ValueError:
        print("meshctl: --outbound-tcp takes HOST:PORT=LOCAL_PORT", file=sys.stderr)
        return 2
    node = ProxyNode(
        name=args.workload,
        namespace=args.namespace,
        service_account=args.workload,
        labels=dict(labels),
        bind_address=args.bind_address,
        sidecar=True,
        inbound_ports=tuple(sorted((int(p), int(a)) for p, a in ports)),
        outbound_port=args.outbound_port,
        instance_ips=tuple(args.instance_ip),
        outbound_tcp=outbound_tcp,
    )
    return run_agent_command(args, node)
