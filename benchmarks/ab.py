"""A/B of the mesh transport's own CPU per request: a git ref against the working tree.

    python benchmarks/ab.py --ref 6fd74eb [--rounds 15] [--requests 10000]
    make ab REF=6fd74eb

Rows of `make bench` move by tens of µs between runs against a real server;
the per-request cost of our own Python moves by one or two. So both builds
drive the mesh transport against an in-memory upstream (httpx.MockTransport)
in separate processes, alternating A and B every round, and the minimum CPU
time of the requesting thread (time.thread_time: the xDS client's thread does
not count) per request over the rounds is compared: the least disturbed round
of each; the lower quartile and the median are printed beside it. The old
library is `git archive <ref> src` put first on PYTHONPATH; the control plane
(the working tree's) and the route are the same for both. Each worker checks it
imported the build it was meant to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "bench.default.mesh"
URL = f"http://{HOST}:8080/item"
ROWS = ("plain httpx (no mesh)", "mesh sync", "mesh async")


def _worker(bootstrap: str, requests: int, telemetry_off: bool, expect: str) -> None:
    """One round in this process: µs of CPU per request for each row, as JSON."""
    import httpx

    import proxyless_mesh
    from proxyless_mesh import Mesh

    where = Path(proxyless_mesh.__file__).resolve()
    if not where.is_relative_to(Path(expect).resolve()):
        raise SystemExit(f"imported {where}, expected a build under {expect}")

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"ok")

    def per_request(client: httpx.Client) -> float:
        started = time.thread_time()
        for _ in range(requests):
            client.get(URL)
        return (time.thread_time() - started) / requests * 1e6

    results: dict[str, float] = {}
    with Mesh.from_bootstrap(bootstrap, preload=[f"{HOST}:8080"]) as mesh:
        if telemetry_off:
            from proxyless_mesh.telemetry import TelemetryConfig

            mesh.telemetry = type(mesh.telemetry).from_bootstrap(
                mesh.bootstrap, TelemetryConfig.off()
            )
        for row, transport in (
            (ROWS[0], httpx.MockTransport(answer)),
            (ROWS[1], mesh.httpx_transport(httpx.MockTransport(answer))),
        ):
            with httpx.Client(transport=transport) as client:
                for _ in range(500):
                    client.get(URL)
                results[row] = per_request(client)

        async def run_async() -> float:
            transport = mesh.async_httpx_transport(httpx.MockTransport(answer))
            async with httpx.AsyncClient(transport=transport) as client:
                for _ in range(500):
                    await client.get(URL)
                started = time.thread_time()
                for _ in range(requests):
                    await client.get(URL)
                return (time.thread_time() - started) / requests * 1e6

        results[ROWS[2]] = asyncio.run(run_async())
    print(json.dumps(results))


def _export(ref: str, into: Path) -> Path:
    """`src/` of `ref`, as `git archive` gives it."""
    archive = subprocess.run(
        ["git", "archive", ref, "src"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def _round(src: Path, bootstrap: Path, args: argparse.Namespace) -> dict[str, float]:
    argv = [sys.executable, __file__, "--worker", str(bootstrap), "--requests", str(args.requests)]
    argv += ["--expect", str(src)] + (["--telemetry-off"] if args.telemetry_off else [])
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if done.returncode:
        raise SystemExit(f"worker for {src} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def compare(args: argparse.Namespace) -> str:
    """Alternate A (the ref) and B (the working tree) for `rounds` rounds; the table."""
    sys.path.insert(0, str(ROOT / "examples"))
    from meshlab import LocalMesh, service_entry

    with tempfile.TemporaryDirectory() as tmp:
        # A copy of the working tree's src: editing it during the run changes nothing.
        tree = shutil.copytree(ROOT / "src", Path(tmp) / "tree" / "src")
        builds = {args.ref: _export(args.ref, Path(tmp) / "ref"), "working tree": tree}
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in builds}
        lab = LocalMesh(Path(tmp) / "lab")
        try:
            lab.write_config("svc.yaml", service_entry(HOST, 8080, [("127.0.0.1", 9, {})]))
            lab.start_control_plane()
            bootstrap = lab.bootstrap("ab")
            for number in range(args.rounds):
                order = list(builds) if number % 2 == 0 else list(reversed(builds))
                for name in order:
                    rounds[name].append(_round(builds[name], bootstrap, args))
                    if args.verbose:
                        print(number, name, rounds[name][-1], file=sys.stderr, flush=True)
        finally:
            lab.close()
    return table(args, rounds)


def table(args: argparse.Namespace, rounds: dict[str, list[dict[str, float]]]) -> str:
    telemetry = "off" if args.telemetry_off else "as the bootstrap sets it (no SDK)"
    lines = [
        f"### A/B: {args.ref} vs working tree, µs CPU per request "
        f"({args.rounds} alternating rounds of {args.requests:,} requests, "
        f"in-memory upstream, telemetry {telemetry})",
        "",
        "| row | build | min | lower quartile | median | max | min B - A | quartile B - A |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = list(rounds)
    for row in ROWS:
        values = {name: sorted(r[row] for r in rounds[name]) for name in names}
        quartile = {
            name: statistics.quantiles(v, n=4, method="inclusive")[0] for name, v in values.items()
        }
        for name in names:
            ordered = values[name]
            deltas = ("", "")
            if name == names[1]:
                deltas = (
                    f"{ordered[0] - values[names[0]][0]:+.2f}",
                    f"{quartile[name] - quartile[names[0]]:+.2f}",
                )
            lines.append(
                f"| {row} | {name} | {ordered[0]:.2f} | {quartile[name]:.2f} "
                f"| {statistics.median(ordered):.2f} | {ordered[-1]:.2f} "
                f"| {deltas[0]} | {deltas[1]} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref", default="HEAD", help="git ref of build A (default HEAD)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--telemetry-off", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="print every round to stderr")
    parser.add_argument("--worker", metavar="BOOTSTRAP", help=argparse.SUPPRESS)
    parser.add_argument("--expect", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.requests, args.telemetry_off, args.expect)
        return
    # Stopped by a signal: end as on ^C, so the control plane is stopped too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(compare(args))


if __name__ == "__main__":
    main()
