"""`meshctl token create`: mint a join token for one workload identity.

The token is printed on stdout (nothing else is), so it can be captured:
`TOKEN=$(meshctl token create --namespace shop --service-account reviews)`.
It is signed with the token key in the CA dir, which must be the control
plane's (`--ca-dir`, same default as `meshctl control-plane`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from mesh_control_plane.ca import CA_DIR_ENV, TokenAuthority, default_ca_dir, parse_duration
from proxyless_mesh.security import DEFAULT_TRUST_DOMAIN, SpiffeId


def add_parser(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser("token", help="join tokens for workloads")
    actions = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create", help="print a join token granting one SPIFFE identity, for a limited time"
    )
    create.add_argument("--namespace", required=True)
    create.add_argument("--service-account", required=True)
    create.add_argument("--ttl", default="24h", type=_duration, help="lifetime, e.g. 24h, 30m")
    create.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    create.add_argument(
        "--ca-dir",
        type=Path,
        default=None,
        help="the control plane's CA directory (default: $MESHCTL_CA_DIR, else mesh-ca/ "
        "beside --config-dir)",
    )
    create.add_argument(
        "--config-dir", type=Path, help="the control plane's --config-dir, to find its CA dir"
    )
    create.set_defaults(run=run)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    try:
        identity = SpiffeId(args.trust_domain, args.namespace, args.service_account)
    except ValueError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 2
    ca_dir: Path | None = args.ca_dir
    if ca_dir is None and (args.config_dir is not None or os.environ.get(CA_DIR_ENV)):
        ca_dir = default_ca_dir(args.config_dir or Path("."))
    if ca_dir is None:
        print(
            "meshctl: which CA? give --ca-dir (or --config-dir) as for meshctl control-plane, "
            "or set $MESHCTL_CA_DIR",
            file=sys.stderr,
        )
        return 2
    try:
        tokens = TokenAuthority.open(ca_dir)
    except (OSError, ValueError) as exc:
        print(f"meshctl: cannot use the token key in {ca_dir}: {exc}", file=sys.stderr)
        return 1
    print(tokens.mint(identity, args.ttl))
    return 0
