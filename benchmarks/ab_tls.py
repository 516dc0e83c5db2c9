"""A/B of the client's TLS data path on a kept-alive mesh mTLS connection (issue 25).

    python benchmarks/ab_tls.py [--rounds 10] [--requests 2000] [--rate 100] [--seconds 10]

The bench's lab (lab.py: control plane with its CA, the STRICT mesh server
`sa/bench-server` under uvicorn with uvloop), and load_worker.py processes
that differ only in their environment: mesh plaintext (the baseline), mesh
mTLS with httpcore's own sync TLS stream (`PROXYLESS_MESH_TLS_STREAM=
httpcore`), and mesh mTLS with the default direct stream
(integrations/_tls_stream.py). data_path.measure runs them in alternating
rounds (order rotated per round), closed loop and open loop at `--rate`.
Besides latency, each row's client CPU and its server's CPU per request
(the server process is the row's "side" process: it serves only the row
being measured at that moment).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import common  # noqa: F401  (makes examples/ importable)
import data_path
from common import md_table
from lab import start_lab
from meshlab import LocalMesh
from rows import HTTP_PATH, Row, Running, Setup, Worker, own_bootstrap

VARIANTS = (
    ("mesh plaintext", False, {}),
    ("mesh mTLS, httpcore's TLS stream", True, {"PROXYLESS_MESH_TLS_STREAM": "httpcore"}),
    ("mesh mTLS, direct TLS stream (default)", True, {}),
)


def server_pid(setup: Setup, name: str) -> int:
    return next(p.popen.pid for p in setup.lab.procs if p.name == name)


def variant_row(label: str, mtls: bool, env: dict[str, str]) -> Callable[[Setup], Running]:
    """A mesh row to the plaintext or the mTLS server with its own environment;
    the server's process is its side process."""

    def start(setup: Setup) -> Running:
        authority = setup.mtls_authority if mtls else setup.http_authority
        node = "ab-tls-" + "".join(c if c.isalnum() else "-" for c in label)
        argv = ["--kind", "http", "--target", f"http://{authority}{HTTP_PATH}"]
        argv += ["--mesh-bootstrap", str(own_bootstrap(setup, node, mtls))]
        server = server_pid(setup, "server-http-mtls" if mtls else "server-http-v1")
        return Running(Worker(label, argv, setup.lab.workdir, env), [server])

    return start


def table(rows: list[Row], tallies: dict[str, data_path.Tally]) -> str:
    base = tallies[rows[0].name]
    lines = []
    for row in rows:
        t = tallies[row.name]
        lines.append(
            [
                row.name,
                *(f"{t.p(q) * 1000:.0f}" for q in (50, 90, 99)),
                *(f"{(t.p(q) - base.p(q)) * 1000:+.0f}" for q in (50, 99)),
                f"{t.client_cpu / t.requests * 1e6:.0f}",
                f"{t.side_cpu / t.requests * 1e6:.0f}",
                f"{t.requests:,}",
            ]
        )
    headers = ["path", "p50 µs", "p90 µs", "p99 µs", "added p50", "added p99"]
    headers += ["client CPU µs/req", "server CPU µs/req", "requests"]
    return md_table(headers, lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=300)
    args = parser.parse_args(argv)
    rows = [Row("mtls", label, variant_row(label, mtls, env)) for label, mtls, env in VARIANTS]
    plan = data_path.scenarios(args.requests, [args.rate] if args.rate else [], args.seconds)
    with tempfile.TemporaryDirectory(prefix="mesh-ab-tls-") as tmp:
        (Path(tmp) / "data").mkdir()
        lab = LocalMesh(Path(tmp) / "data")
        try:
            setup = start_lab(lab)
            results = data_path.measure(setup, rows, plan, args.rounds, args.warmup)
        finally:
            lab.close()
    for scenario in plan:
        print(f"\n### {scenario.name}, {args.rounds} alternating rounds\n")
        print(table(rows, results[scenario.name]))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
