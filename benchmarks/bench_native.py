"""The native core (issue 25): EDS decoding and import cost.

    python benchmarks/bench_native.py [--quick]

- EDS: `decode_cluster_load_assignment` on a packed ClusterLoadAssignment
  (the xDS client's entry point: bytes -> view in Rust, model in Python; the
  protobuf decoder it was measured against is gone). CPU time per decode
  (`time.process_time_ns`, so other jobs on the machine count little),
  median of repetitions.
- Import: CPU time and peak RSS of the imports in a fresh interpreter, median
  of repetitions.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import any_pb2

from proxyless_mesh.xds_client import decode_cluster_load_assignment

SHAPES = ((1, 10), (10, 10), (10, 100))  # (localities, endpoints per locality)
IMPORTS = (
    "import httpx",
    "import proxyless_mesh",
    "from proxyless_mesh import MeshTransport",
    "from proxyless_mesh import Mesh",
    # Every public name: what `import proxyless_mesh` cost before issue 25.
    "import proxyless_mesh as m; [getattr(m, n) for n in m.__all__]",
)


def _packed(localities: int, per_locality: int) -> any_pb2.Any:
    msg = endpoint_pb2.ClusterLoadAssignment(cluster_name="outbound|80||reviews.default.mesh")
    for i in range(localities):
        lle = msg.endpoints.add()
        lle.locality.region, lle.locality.zone = "eu", f"eu-{i}"
        lle.load_balancing_weight.value = 1
        for j in range(per_locality):
            lb = lle.lb_endpoints.add()
            sa = lb.endpoint.address.socket_address
            sa.address, sa.port_value = f"10.{i}.{j // 250}.{j % 250 + 1}", 8080
            lb.health_status = 1
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def _cpu_us(call: Callable[[], object], n: int, repetitions: int) -> float:
    rounds = []
    for _ in range(repetitions):
        t0 = time.process_time_ns()
        for _ in range(n):
            call()
        rounds.append((time.process_time_ns() - t0) / n / 1000)
    return statistics.median(rounds)


def decode_rows(quick: bool) -> list[tuple[str, float]]:
    """(shape, native decode to the model us)."""
    rows = []
    for localities, per in SHAPES:
        packed = _packed(localities, per)
        n = max(3, (200 if quick else 2000) // (localities * per))
        native_us = _cpu_us(
            lambda p=packed: decode_cluster_load_assignment(p), n, 3 if quick else 7
        )
        rows.append((f"{localities} x {per} endpoints", native_us))
    return rows


def import_rows(quick: bool) -> list[tuple[str, float, float]]:
    """(statement, CPU ms, peak RSS MB), fresh interpreter each time."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the
    # forking (large) benchmark process.
    probe = (
        "import time, json\nt = time.process_time()\n{stmt}\ncpu = time.process_time() - t\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(json.dumps([cpu, int(hwm.split()[1])]))"
    )
    # Bytecode first, as a wheel install leaves it: without it (an editable
    # install under PYTHONDONTWRITEBYTECODE) every start compiles the library.
    library = Path(__file__).resolve().parent.parent / "src"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(library)], check=True)
    rows = []
    for stmt in IMPORTS:
        samples = []
        for _ in range(3 if quick else 5):
            out = subprocess.run(
                [sys.executable, "-c", probe.format(stmt=stmt)],
                capture_output=True,
                text=True,
                check=True,
            )
            samples.append(json.loads(out.stdout))
        cpu = statistics.median(s[0] for s in samples) * 1000
        rss = statistics.median(s[1] for s in samples) / 1024
        rows.append((stmt, cpu, rss))
    return rows


def run(quick: bool = False) -> str:
    """The markdown section body (the `make bench` runner calls this)."""
    lines = [
        "EDS decode, `decode_cluster_load_assignment(Any)`, CPU µs per decode "
        "(median of repetitions):\n",
        "| ClusterLoadAssignment | bytes to model |",
        "|---|---:|",
    ]
    for shape, native_us in decode_rows(quick):
        lines.append(f"| {shape} | {native_us:.1f} |")
    lines += [
        "\nImport in a fresh interpreter (CPU ms, peak RSS MB; median):\n",
        "| statement | CPU | peak RSS |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| `{stmt}` | {cpu:.0f} ms | {rss:.1f} MB |" for stmt, cpu, rss in import_rows(quick)
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv[1:]))
