"""What a meshed httpx-only process costs in memory and start-up (issue 25).

    python benchmarks/bench_memory.py [--rounds N] [--ref GIT_REF]

Against a real control plane and a real HTTP backend (examples/meshlab.py),
each row is a fresh interpreter that imports, starts a Mesh (or not), sends
200 requests through httpx, and reports its VmRSS, its peak (VmHWM), the CPU
of `from proxyless_mesh import Mesh` and which heavy packages it loaded.
Rows: plain httpx; meshed with ADS/CA over grpcio
(PROXYLESS_MESH_CONTROL_TRANSPORT=grpcio); meshed the default way (h2, and
the native core decoding xDS: no protobuf). With `--ref`, two more rows run
that commit's library (its `src` from `git archive`, the same native core),
without and with an identity. The identity rows' bootstrap carries a CA and a
join token: the workload makes its key and gets its certificate (in Rust, the
native core's). The library's bytecode is
compiled first (`compileall`), as pip does when it installs a wheel: without
it every start compiles ~120 modules from source, which roughly doubled the
import CPU measured before (and PYTHONDONTWRITEBYTECODE, set on the bench
machine, keeps Python from caching it). Median of `--rounds` (5).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

from meshlab import LocalMesh, service_entry, start_process  # noqa: E402

HOST, PORT = "memory.default.mesh", 8080
HEAVY = ("grpc", "google.protobuf", "envoy", "cryptography", "opentelemetry", "h2")

PROBE = """
import json, sys, time
def status(key):
    return int([l for l in open('/proc/self/status') if l.startswith(key)][0].split()[1])
url, bootstrap, heavy = sys.argv[1], sys.argv[2], sys.argv[3].split(',')
import httpx
before = time.process_time()
if bootstrap == '-':
    import_ms = 0.0
    client = httpx.Client()
    for _ in range(200): client.post(url, content=b'x' * 1024).raise_for_status()
else:
    from proxyless_mesh import Mesh
    import_ms = (time.process_time() - before) * 1000
    with Mesh.from_bootstrap(bootstrap) as mesh:
        client = httpx.Client(transport=mesh.httpx_transport())
        for _ in range(200): client.post(url, content=b'x' * 1024).raise_for_status()
        rss = status('VmRSS:')
loaded = sorted({h for h in heavy for m in sys.modules if m == h or m.startswith(h + '.')})
print(json.dumps({"rss": status('VmRSS:') if bootstrap == '-' else rss, "hwm": status('VmHWM:'),
                  "import_ms": import_ms, "loaded": loaded, "modules": len(sys.modules)}))
"""

TRANSPORT = "PROXYLESS_MESH_CONTROL_TRANSPORT"
# row -> (environment, which bootstrap: "" plain httpx, "plain" no CA, "identity")
ROWS: dict[str, tuple[dict[str, str], str]] = {
    "plain httpx": ({}, ""),
    "meshed: ADS and CA over grpcio": ({TRANSPORT: "grpcio"}, "plain"),
    "meshed (default: h2, native decoding)": ({TRANSPORT: "h2"}, "plain"),
    "meshed with a workload identity (default)": ({TRANSPORT: "h2"}, "identity"),
}


def _probe(url: str, bootstrap: str, settings: dict[str, str]) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in (TRANSPORT, "PYTHONPATH")}
    env.update(settings)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, url, bootstrap, ",".join(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _compile(src: Path) -> None:
    """Bytecode for every module under `src`, as a wheel install leaves it."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=True)


def _export(ref: str, into: Path) -> str:
    """`ref`'s src directory (compiled), for PYTHONPATH."""
    root = HERE.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", ref, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    _compile(into / "src")
    return str(into / "src")


def measure(rounds: int, ref: str | None = None) -> str:
    rows = dict(ROWS)
    _compile(HERE.parent / "src")
    with tempfile.TemporaryDirectory() as tmp:
        if ref is not None:
            old = {"PYTHONPATH": _export(ref, Path(tmp))}
            rows[f"meshed at {ref}"] = (old, "plain")
            rows[f"meshed with a workload identity at {ref}"] = (old, "identity")
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
            bootstraps = {
                "": "-",
                "plain": str(lab.bootstrap("memory")),
                "identity": str(lab.bootstrap("memory-id", token=lab.token("default", "default"))),
            }
            samples: dict[str, list[dict[str, object]]] = {row: [] for row in rows}
            for _ in range(rounds):  # rows interleaved: drift hits all alike
                for row, (settings, boot) in rows.items():
                    url = f"http://{HOST}:{PORT}/" if boot else f"http://127.0.0.1:{port}/"
                    samples[row].append(_probe(url, bootstraps[boot], settings))
        finally:
            lab.close()
    base = statistics.median(float(str(s["rss"])) for s in samples["plain httpx"]) / 1024
    lines = [
        f"Fresh interpreter, 200 requests sent, median of {rounds}:",
        "",
        "| process | VmRSS | added | peak (VmHWM) | `from proxyless_mesh import Mesh` CPU"
        " | modules | heavy packages loaded |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row, runs in samples.items():
        rss = statistics.median(float(str(s["rss"])) for s in runs) / 1024
        hwm = statistics.median(float(str(s["hwm"])) for s in runs) / 1024
        cpu = statistics.median(float(str(s["import_ms"])) for s in runs)
        modules = statistics.median(int(str(s["modules"])) for s in runs)
        loaded = ", ".join(runs[-1]["loaded"]) or "-"  # type: ignore[arg-type]
        added = f"+{rss - base:.1f} MB" if row != "plain httpx" else "-"
        lines.append(
            f"| {row} | {rss:.1f} MB | {added} | {hwm:.1f} MB | {cpu:.0f} ms | {modules:.0f}"
            f" | {loaded} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ref", help="also measure this commit's library (git ref)")
    args = parser.parse_args()
    print(measure(args.rounds, args.ref))


if __name__ == "__main__":
    main()
