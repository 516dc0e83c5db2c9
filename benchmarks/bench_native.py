"""The native core (issue 25): EDS decoding and import cost, before/after.

    python benchmarks/bench_native.py [--quick]

- EDS: `decode_cluster_load_assignment` on a packed ClusterLoadAssignment
  (the xDS client's entry point), with the native core (bytes -> view in Rust,
  model in Python) and with the Python protobuf runtime (PROXYLESS_MESH_NATIVE
  =off does the same for a whole process). CPU time per decode
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

from proxyless_mesh.xds_client import _decode_endpoints as endpoints
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


def decode_rows(quick: bool) -> list[tuple[str, float, float | None]]:
    """(shape, Python us, native us or None when the core is not built)."""
    native = endpoints.native_decode
    rows = []
    for localities, per in SHAPES:
        packed = _packed(localities, per)
        n = max(3, (200 if quick else 2000) // (localities * per))
        repetitions = 3 if quick else 7
        endpoints.native_decode = None
        python_model = decode_cluster_load_assignment(packed)
        python_us = _cpu_us(lambda p=packed: decode_cluster_load_assignment(p), n, repetitions)
        native_us = None
        if native is not None:
            endpoints.native_decode = native
            if decode_cluster_load_assignment(packed) != python_model:
                raise RuntimeError("native and Python decoders disagree")
            native_us = _cpu_us(lambda p=packed: decode_cluster_load_assignment(p), n, repetitions)
        rows.append((f"{localities} x {per} endpoints", python_us, native_us))
    endpoints.native_decode = native
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
        "| ClusterLoadAssignment | Python protobuf | native core | ratio |",
        "|---|---:|---:|---:|",
    ]
    for shape, python_us, native_us in decode_rows(quick):
        if native_us is None:
            lines.append(f"| {shape} | {python_us:.1f} | not built | — |")
        else:
            ratio = native_us / python_us
            lines.append(f"| {shape} | {python_us:.1f} | {native_us:.1f} | {ratio:.2f} |")
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
