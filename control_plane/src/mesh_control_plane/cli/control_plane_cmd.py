"""`meshctl control-plane`: serve a config directory over ADS until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mesh_control_plane.app import Addresses, serve


def add_parser(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser(
        "control-plane", help="serve Istio YAML from a directory as xDS (ADS)"
    )
    p.add_argument("--config-dir", type=Path, required=True, help="directory of Istio YAML")
    p.add_argument("--xds-address", default="127.0.0.1:15010", help="HOST:PORT for ADS")
    p.add_argument("--admin-address", default="127.0.0.1:15014", help="HOST:PORT for admin")
    p.add_argument(
        "--ready-file",
        type=Path,
        help='once listening, write {"xds": ..., "admin": ...} here (atomically)',
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    p.set_defaults(run=run)


def write_ready_file(path: Path, addresses: Addresses) -> None:
    """Write then rename, so a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"xds": addresses.xds, "admin": addresses.admin}) + "\n")
    tmp.replace(path)


def print_config_errors(problems: Sequence[str]) -> None:
    for problem in problems:
        print(f"config error: {problem}", file=sys.stderr, flush=True)


async def _run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def ready(addresses: Addresses) -> None:
        if args.ready_file is not None:
            write_ready_file(args.ready_file, addresses)

    await serve(
        args.config_dir,
        xds_address=args.xds_address,
        admin_address=args.admin_address,
        stop=stop,
        on_ready=ready,
        on_config_error=print_config_errors,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.config_dir.is_dir():
        print(f"meshctl: --config-dir {args.config_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(args))
    except OSError as exc:
        print(f"meshctl: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0
