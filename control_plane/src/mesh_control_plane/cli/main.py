"""`meshctl`: the control plane's command line. One module per command.

Each command module exposes `add_parser(subparsers)` (which sets `run` as the
parser's handler) so this file only assembles them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mesh_control_plane.cli import (
    analyze_cmd,
    bootstrap_cmd,
    config_dump_cmd,
    control_plane_cmd,
    describe_cmd,
    gateway_cmd,
    install_cmd,
    proxy_cmd,
    simulate_cmd,
    status_cmd,
    token_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshctl", description="Run and inspect the proxyless-mesh control plane."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    control_plane_cmd.add_parser(commands)
    bootstrap_cmd.add_parser(commands)
    status_cmd.add_parser(commands)
    token_cmd.add_parser(commands)
    config_dump_cmd.add_parser(commands)
    describe_cmd.add_parser(commands)
    analyze_cmd.add_parser(commands)
    simulate_cmd.add_parser(commands)
    gateway_cmd.add_parser(commands)
    proxy_cmd.add_parser(commands)
    install_cmd.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `meshctl` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
