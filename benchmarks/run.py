"""`make bench`: what the mesh costs, measured side by side in one run.

Tables printed:
1. Per-request latency (p50, p99) and requests/s of plain httpx and of httpx
   through the mesh transport, against the same loopback uvicorn server, one
   keep-alive connection, closed loop. Rounds alternate between the two
   clients so drift on a noisy machine hits both alike.
2. Propagation: time from writing a VirtualService file to the client's
   routing snapshot holding the new weights (control plane poll + debounce
   + translate + push + client decode + snapshot build).

    python benchmarks/run.py [--requests 2000] [--rounds 5] [--changes 10] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from meshlab import LocalMesh

from proxyless_mesh import Mesh

HOST = "bench.default.mesh"
PORT = 8080


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def timed_requests(client: httpx.Client, url: str, n: int) -> tuple[list[float], float]:
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        client.get(url).read()
        latencies.append(time.perf_counter() - t0)
    return latencies, time.perf_counter() - start


def data_path(lab: LocalMesh, mesh: Mesh, backend_port: int, requests: int, rounds: int) -> None:
    direct_url = f"http://127.0.0.1:{backend_port}/bench"
    mesh_url = f"http://{HOST}:{PORT}/bench"
    results: dict[str, tuple[list[float], float, int]] = {}
    with httpx.Client() as plain, httpx.Client(transport=mesh.httpx_transport()) as meshed:
        for client, url in ((plain, direct_url), (meshed, mesh_url)):
            timed_requests(client, url, 200)  # warm-up: connections, caches
        for _ in range(rounds):
            for name, client, url in (
                ("plain httpx", plain, direct_url),
                ("mesh transport", meshed, mesh_url),
            ):
                lat, elapsed = timed_requests(client, url, requests)
                prev = results.get(name, ([], 0.0, 0))
                results[name] = (prev[0] + lat, prev[1] + elapsed, prev[2] + requests)
    base_p50 = base_p99 = base_rps = 0.0
    print(f"\n## Data path: {rounds} x {requests} sequential GETs, one connection, loopback\n")
    print("| path | p50 (ms) | p99 (ms) | added p50 (us) | added p99 (us) | req/s | vs plain |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (lat, elapsed, n) in results.items():
        lat.sort()
        p50, p99, rps = percentile(lat, 0.5), percentile(lat, 0.99), n / elapsed
        if name == "plain httpx":
            base_p50, base_p99, base_rps = p50, p99, rps
        print(
            f"| {name} | {p50 * 1e3:.3f} | {p99 * 1e3:.3f} | {(p50 - base_p50) * 1e6:+.0f} "
            f"| {(p99 - base_p99) * 1e6:+.0f} | {rps:,.0f} | {rps / base_rps:.1%} |"
        )


def propagation(lab: LocalMesh, mesh: Mesh, changes: int) -> None:
    authority = f"{HOST}:{PORT}"
    times = []
    for i in range(changes):
        v2 = 10 + (i % 2) * 80  # alternate 90/10 and 10/90
        lab.set_weights(HOST, {"v1": 100 - v2, "v2": v2})
        start = time.perf_counter()
        want = ("outbound|8080|v2|" + HOST, v2)
        while True:
            table = mesh.snapshot.routes.get(authority)
            if table is not None and want in table.routes[0].clusters:
                break
            if time.perf_counter() - start > 10:
                raise SystemExit("a change did not reach the client within 10 s")
            time.sleep(0.0005)
        times.append(time.perf_counter() - start)
        time.sleep(0.2)  # let the watcher's debounce window close before the next write
    times.sort()
    print(f"\n## Propagation: VirtualService file write -> client snapshot ({changes} changes)\n")
    print("| p50 (ms) | max (ms) | min (ms) |")
    print("|---:|---:|---:|")
    print(
        f"| {statistics.median(times) * 1e3:.0f} | {times[-1] * 1e3:.0f} | {times[0] * 1e3:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="a smoke run (tests use it)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds, args.changes = 50, 1, 2
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        lab = LocalMesh(Path(tmp))
        try:
            v1 = lab.start_http_backend("bench", "v1")
            v2 = lab.start_http_backend("bench", "v2")
            lab.deploy_versions(HOST, PORT, {"v1": v1, "v2": v2}, {"v1": 100, "v2": 0})
            lab.start_control_plane()
            with Mesh.from_bootstrap(lab.bootstrap("bench"), preload=[f"{HOST}:{PORT}"]) as mesh:
                data_path(lab, mesh, v1.ready["port"], args.requests, args.rounds)
                propagation(lab, mesh, args.changes)
        finally:
            lab.close()


if __name__ == "__main__":
    main()
