"""Where the client CPU of one request goes, in situ (issue 25).

    python benchmarks/profile_request.py [--requests 3000]

A real uvicorn server (benchmarks/servers.py), a control plane, and in this
process plain httpx and the mesh transport (plaintext) posting 1 KB and
reading 1 KB, closed loop on one kept-alive connection. First each client's
CPU per request without a profiler (`time.thread_time`, the requesting
thread only, best of 3 rounds); then the same loop under cProfile, its
self-time summed by component (the package a function lives in). cProfile
inflates Python calls more than C calls, so read the profile's column as
shares; the unprofiled row is the cost. The profiler's clock is the
thread's CPU time, three alternating rounds, the least per component.
Last, the resident memory of a plain and a meshed httpx process that each
sent 200 requests.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

import httpx  # noqa: E402
from meshlab import LocalMesh, service_entry, start_process  # noqa: E402

from proxyless_mesh import Mesh  # noqa: E402

HOST, PORT = "profile.default.mesh", 8080
PAYLOAD = b"x" * 1024
# (substring of the file path, component), first match wins.
COMPONENTS = (
    ("proxyless_mesh/resilience", "mesh: resilience engine"),
    ("proxyless_mesh/integrations", "mesh: transport glue (integrations)"),
    ("proxyless_mesh/telemetry", "mesh: telemetry (no SDK)"),
    ("proxyless_mesh/balancer", "mesh: balancer pick/outcome"),
    ("proxyless_mesh/routing", "mesh: route match"),
    ("proxyless_mesh/", "mesh: other"),
    ("/httpx/", "httpx"),
    ("/httpcore/", "httpcore"),
    ("/h11/", "h11"),
)
WAIT = ("recv_into", "recv", "select", "poll")


def _component(filename: str, name: str) -> str:
    if filename == "~":
        return "socket reads and waits (C)" if any(w in name for w in WAIT) else "C builtins"
    for needle, component in COMPONENTS:
        if needle in filename:
            return component
    return "stdlib (Python)"


def _cpu_us(send: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.thread_time()
        for _ in range(n):
            send()
        best = min(best, (time.thread_time() - started) / n * 1e6)
    return best


def _profile(send: Callable[[], object], n: int) -> dict[str, float]:
    # Thread CPU time as the profiler's clock: other jobs on the machine and
    # the wait for the server do not count (the socket reads' own CPU does).
    profiler = cProfile.Profile(time.thread_time_ns, 1e-9)
    profiler.enable()
    for _ in range(n):
        send()
    profiler.disable()
    by: dict[str, float] = defaultdict(float)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (filename, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.items():
        by[_component(filename, name)] += tottime / n * 1e6
    return dict(by)


def _least(rounds: Iterable[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in rounds:
        for component, us in r.items():
            out[component] = min(out.get(component, us), us)
    return out


# A process that sends 200 requests and prints its VmRSS and VmHWM (KB).
RSS_PROBE = """
import sys, httpx
def status(key):
    return int([l for l in open('/proc/self/status') if l.startswith(key)][0].split()[1])
url, bootstrap = sys.argv[1], sys.argv[2]
if bootstrap == '-':
    client = httpx.Client()
    for _ in range(200): client.post(url, content=b'x' * 1024).raise_for_status()
else:
    from proxyless_mesh import Mesh
    with Mesh.from_bootstrap(bootstrap) as mesh:
        client = httpx.Client(transport=mesh.httpx_transport())
        for _ in range(200): client.post(url, content=b'x' * 1024).raise_for_status()
        print(status('VmRSS:'), status('VmHWM:'))
        raise SystemExit
print(status('VmRSS:'), status('VmHWM:'))
"""


def rss_rows(port: int, bootstrap: Path) -> dict[str, tuple[float, float]]:
    """Resident memory (MB, now and peak) of a process that sent 200 requests,
    plain httpx and meshed (plaintext, no telemetry SDK), median of 3."""
    rows = {
        "plain httpx process": (f"http://127.0.0.1:{port}/", "-"),
        "meshed httpx process": (f"http://{HOST}:{PORT}/", str(bootstrap)),
    }
    out: dict[str, tuple[float, float]] = {}
    for row, (url, boot) in rows.items():
        samples = []
        for _ in range(3):
            done = subprocess.run(
                [sys.executable, "-c", RSS_PROBE, url, boot],
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            )
            rss, hwm = done.stdout.split()
            samples.append((int(rss) / 1024, int(hwm) / 1024))
        samples.sort()
        out[row] = samples[1]
    return out


def measure(requests: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "lab").mkdir()
        lab = LocalMesh(Path(tmp) / "lab")
        try:
            server = start_process(
                "server", [sys.executable, str(HERE / "servers.py"), "--kind", "http"], lab.workdir
            )
            lab.procs.append(server)
            port = server.ready["port"]
            lab.write_config("svc.yaml", service_entry(HOST, PORT, [("127.0.0.1", port, {})]))
            lab.start_control_plane()
            bootstrap = lab.bootstrap("profile")
            with Mesh.from_bootstrap(bootstrap, preload=[f"{HOST}:{PORT}"]) as mesh:
                plain = httpx.Client()
                meshed = httpx.Client(transport=mesh.httpx_transport())
                rows = {
                    "plain httpx": lambda: plain.post(f"http://127.0.0.1:{port}/", content=PAYLOAD),
                    "mesh transport": lambda: meshed.post(
                        f"http://{HOST}:{PORT}/", content=PAYLOAD
                    ),
                }
                for send in rows.values():
                    for _ in range(300):
                        send()
                cost = {row: _cpu_us(send, requests) for row, send in rows.items()}
                # Alternating rounds; per component the least disturbed one.
                rounds = [{row: _profile(send, requests) for row, send in rows.items()}]
                rounds += [{row: _profile(send, requests) for row, send in rows.items()}]
                rounds += [{row: _profile(send, requests) for row, send in rows.items()}]
                shares = {row: _least(r[row] for r in rounds) for row in rows}
                plain.close()
                meshed.close()
            rss = rss_rows(port, bootstrap)
        finally:
            lab.close()
    return table(requests, cost, shares) + "\n\n" + rss_table(rss)


def rss_table(rss: dict[str, tuple[float, float]]) -> str:
    lines = ["| process (sent 200 requests) | VmRSS | peak (VmHWM) |", "|---|---:|---:|"]
    lines += [f"| {row} | {now:.1f} MB | {peak:.1f} MB |" for row, (now, peak) in rss.items()]
    return "\n".join(lines)


def table(requests: int, cost: dict[str, float], shares: dict[str, dict[str, float]]) -> str:
    plain, mesh = shares["plain httpx"], shares["mesh transport"]
    lines = [
        f"Client thread CPU per request, no profiler, best of 3 x {requests:,}: plain httpx "
        f"{cost['plain httpx']:.0f} µs, mesh transport {cost['mesh transport']:.0f} µs "
        f"(+{cost['mesh transport'] - cost['plain httpx']:.0f} µs).\n",
        "| component (cProfile self time, µs per request) | plain httpx | mesh | mesh - plain |",
        "|---|---:|---:|---:|",
    ]
    for component in sorted(set(plain) | set(mesh), key=lambda c: -mesh.get(c, 0.0)):
        a, b = plain.get(component, 0.0), mesh.get(component, 0.0)
        lines.append(f"| {component} | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
    lines.append(
        f"| total (profiled) | {sum(plain.values()):.1f} | {sum(mesh.values()):.1f} "
        f"| {sum(mesh.values()) - sum(plain.values()):+.1f} |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    print(measure(parser.parse_args().requests))


if __name__ == "__main__":
    main()
