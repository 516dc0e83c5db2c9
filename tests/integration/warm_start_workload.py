"""A meshed client process for the warm-start tests: enters `Mesh` (timing it),
writes its ready file, then sends a request through the mesh every 100 ms and
prints one JSON line per request with what it saw.

    python warm_start_workload.py --bootstrap B --url U --ready-timeout 30 --ready-file F

Logging goes to stderr at INFO, so the test reads the mesh's own lines too.
SIGTERM is a clean stop (the mesh flushes its caches).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from typing import Any

import httpx
from backend_support import write_ready

from proxyless_mesh import Mesh


def _status(mesh: Mesh, client: httpx.Client, url: str) -> dict[str, Any]:
    manager = mesh.identity_manager
    line: dict[str, Any] = {
        "connected": mesh.xds.connected,
        "cert_serial": None if manager is None else manager.credentials.leaf.der.hex(),
    }
    try:
        response = client.get(url, timeout=2.0)
        line.update(status=response.status_code, version=response.json().get("version"))
    except (httpx.HTTPError, ValueError) as exc:
        line["error"] = repr(exc)
    return line


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--ready-timeout", type=float, default=10.0)
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    began = time.monotonic()
    with Mesh.from_bootstrap(args.bootstrap, ready_timeout=args.ready_timeout) as mesh:
        started_after = time.monotonic() - began
        client = httpx.Client(transport=mesh.httpx_transport())
        first = _status(mesh, client, args.url)
        write_ready(args.ready_file, {"started_after": started_after, **first})
        while not stop.wait(0.1):
            print(json.dumps(_status(mesh, client, args.url)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
