"""`meshctl gateway run --name NAME`: an Envoy gateway programmed by the control plane.

The Envoy's node is a "router" (Istio's gateway node type) with labels
(default ``istio=<name>``) that Gateways select; its identity is
``spiffe://<trust domain>/ns/<namespace>/sa/<service account>`` (default
service account: the name), proven to the CA with a join token
(``--token`` or $PROXYLESS_MESH_TOKEN). See gateway/agent.py for what runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mesh_control_plane.cli.agent_args import add_agent_arguments, parse_pairs, run_agent_command
from mesh_control_plane.cli.gateway_status import add_status_parser
from mesh_control_plane.gateway.bootstrap import ProxyNode
from mesh_control_plane.kube.client import KubeConfigError, connection_from


def add_parser(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser("gateway", help="Envoy gateways")
    actions = p.add_subparsers(dest="gateway_command", required=True, metavar="ACTION")
    run_p = actions.add_parser("run", help="run an Envoy gateway following the control plane")
    run_p.add_argument("--name", required=True, help="the gateway's name (node and pod name)")
    add_agent_arguments(run_p)
    run_p.add_argument(
        "--credentials-dir", type=Path, help="credentialName certificates: DIR/<name>/tls.crt ..."
    )
    run_p.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="credentialName also from the namespace's kubernetes.io/tls Secrets, read with "
        "this kubeconfig (`in-cluster`: the Pod's ServiceAccount)",
    )
    run_p.add_argument(
        "--free-ports", action="store_true", help="bind every server on a port the kernel picks"
    )
    run_p.set_defaults(run=run)
    add_status_parser(actions)


def run(args: argparse.Namespace) -> int:
    labels = parse_pairs(args.label, "--label")
    if labels is None:
        return 2
    node = ProxyNode(
        name=args.name,
        namespace=args.namespace,
        service_account=args.name,
        labels=dict(labels) or {"istio": args.name},
        bind_address=args.bind_address,
        free_ports=args.free_ports,
    )
    kube = None
    if args.kubeconfig:
        try:
            kube = connection_from(args.kubeconfig)
        except KubeConfigError as exc:
            print(f"meshctl: --kubeconfig: {exc}", file=sys.stderr)
            return 2
    return run_agent_command(args, node, args.credentials_dir, kube)
