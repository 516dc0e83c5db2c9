"""Where the CPU of one request goes, in situ: perf, py-spy, strace (issue 25).

    python benchmarks/profile_tls.py [--requests 3000] [--rate 100] [--seconds 20]
                                     [--rounds 2] [--strace] [--pyspy]

Needs `perf` (and with --pyspy, py-spy in the venv; --strace, strace). The
bench's lab (lab.py) and three rows, each a load_worker.py process on one
kept-alive connection: plain httpx and the mesh transport to the plaintext
uvicorn server, the mesh transport with mTLS to the STRICT mesh server (the
library's uvicorn protocol, uvloop). Closed loop and open loop at `--rate`,
rounds alternating the rows. While a row runs, `perf record -e cpu-clock -g`
samples its client process and its server process (on-CPU time only, every
thread, kernel included). Each sample is charged by its innermost frame:
OpenSSL, the `_ssl` module, the CPython interpreter (all Python code), libc,
the native core, other native modules, or the kernel, split by the system
call found in the call chain. Shares times the process's CPU per request give
microseconds per request.

Python 3.11 has no `-X perf`, so perf cannot name Python functions. `--pyspy`
adds a py-spy pass per row (`--native`, 1,000 Hz): the requesting thread's
samples outside system calls and OpenSSL split perf's user-space CPU (all
threads; the others' is small) by package (httpx, httpcore,
h11, the mesh's parts; the stdlib and C a package calls are charged to it).
py-spy counts a thread preempted inside a system call as running, so system
calls are taken from perf only.

`--strace` counts each row's system calls per request (strace -f -c over 500
closed-loop requests; strace slows the run, so no timing from it).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import common  # noqa: F401  (makes examples/ importable)
from common import cpu_seconds, md_table
from lab import start_lab
from meshlab import LocalMesh
from profile_request import COMPONENTS
from rows import HTTP_PATH, Running, Setup, Worker, own_bootstrap, plain_httpx

PY_SPY = Path(sys.executable).with_name("py-spy")
PY_SPY_RECORD = ("record", "--native", "--full-filenames", "-r", "1000", "--format", "raw")


def server_pid(setup: Setup, name: str) -> int:
    return next(p.popen.pid for p in setup.lab.procs if p.name == name)


def plain_httpx_to_v1(setup: Setup) -> Running:
    """Plain httpx, with the server it talks to as its side process."""
    running = plain_httpx(setup)
    running.side_pids.append(server_pid(setup, "server-http-v1"))
    return running


def mesh_row(mtls: bool) -> Callable[[Setup], Running]:
    """The mesh transport to the plaintext server or, with mTLS, to the STRICT
    mesh server; that server's process is the row's side process."""

    def start(setup: Setup) -> Running:
        label = f"profile-mesh-{'mtls' if mtls else 'plain'}"
        authority = setup.mtls_authority if mtls else setup.http_authority
        argv = ["--kind", "http", "--target", f"http://{authority}{HTTP_PATH}"]
        argv += ["--mesh-bootstrap", str(own_bootstrap(setup, label, mtls))]
        server = server_pid(setup, "server-http-mtls" if mtls else "server-http-v1")
        return Running(Worker(label, argv, setup.lab.workdir, {}), [server])

    return start


ROWS: tuple[tuple[str, Callable[[Setup], Running]], ...] = (
    ("plain httpx", plain_httpx_to_v1),
    ("mesh plaintext", mesh_row(mtls=False)),
    ("mesh mTLS", mesh_row(mtls=True)),
)
PERF_RECORD = ("perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", "-g")
SYSCALL_GROUPS = (
    (("sendto", "sendmsg", "write", "writev"), "kernel: send"),
    (("recvfrom", "recvmsg", "read", "readv"), "kernel: receive"),
    (("poll", "ppoll", "select", "pselect6", "epoll_wait", "epoll_pwait"), "kernel: poll"),
    (("ioctl", "fcntl"), "kernel: ioctl/fcntl (blocking mode flips)"),
    (("clock_nanosleep", "nanosleep"), "kernel: sleep"),
    (("futex",), "kernel: futex (GIL, other threads)"),
)
SYSCALL_FRAME = re.compile(r"^(?:__x64_sys_|__do_sys_|__se_sys_|ksys_)(\w+)$")


def _native(dso: str) -> str:
    name = os.path.basename(dso.strip("()"))
    if name.startswith(("libssl", "libcrypto")):
        return "OpenSSL (libssl, libcrypto)"
    if name.startswith("_ssl."):
        return "_ssl module (C glue)"
    if name.startswith(("python", "libpython")):
        return "CPython interpreter (all Python code)"
    if name.startswith("libc.") or name.startswith("libc-"):
        return "libc (malloc, memcpy, ...)"
    if "proxyless_mesh" in name or name.startswith("_native"):
        return "native core"
    return "other native (socket, select, ctypes, vdso, ...)"


def _kernel(frames: Sequence[tuple[str, str]]) -> str:
    for symbol, _ in frames:
        found = SYSCALL_FRAME.match(symbol)
        if found:
            call = found.group(1)
            for names, group in SYSCALL_GROUPS:
                if call in names:
                    return group
            return "kernel: other system calls"
    return "kernel: interrupts, faults, scheduling"


def classify(frames: Sequence[tuple[str, str]]) -> str:
    """A sample's category from its frames (symbol, dso), innermost first."""
    if not frames:
        return "unknown"
    dso = frames[0][1]
    if "kernel" in dso or dso.startswith("([k"):
        return _kernel(frames)
    return _native(dso)


def samples(perf_data: Path) -> Counter[str]:
    """Categories of every sample in a perf.data file."""
    text = subprocess.run(
        ["perf", "script", "-i", str(perf_data), "-F", "ip,sym,dso"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: Counter[str] = Counter()
    frames: list[tuple[str, str]] = []
    for line in [*text.splitlines(), ""]:
        line = line.strip()
        if not line:  # a blank line ends a sample's call chain
            if frames:
                counts[classify(frames)] += 1
            frames = []
            continue
        parts = line.split(None, 1)
        rest = parts[1] if len(parts) > 1 else ""
        symbol, _, dso = rest.rpartition(" (")
        frames.append((symbol.split("+")[0], dso.rstrip(")")))
    return counts


def _perf(pid: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*PERF_RECORD, "-p", str(pid), "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def profiled(
    running: Running, command: dict[str, object], out: Path
) -> tuple[dict[str, Any], Counter[str], float, Counter[str]]:
    """Run one scenario on a worker with perf on it and on its server: the
    worker's answer and samples, the server's CPU seconds and samples."""
    server_pid = running.side_pids[0]
    client = _perf(running.worker.popen.pid, out.with_suffix(".client"))
    server = _perf(server_pid, out.with_suffix(".server"))
    time.sleep(0.5)  # perf attaches; the worker is idle meanwhile (no samples)
    server_cpu = cpu_seconds(server_pid)
    answer = running.worker.run(command)
    server_cpu = cpu_seconds(server_pid) - server_cpu
    for perf in (client, server):
        perf.send_signal(signal.SIGINT)
        perf.wait(30)
    return (
        answer,
        samples(out.with_suffix(".client")),
        server_cpu,
        samples(out.with_suffix(".server")),
    )


SYSCALL = "in a system call"
SYSCALLS = frozenset(
    (
        *("read", "write", "recv", "recvfrom", "send", "sendto", "poll", "ppoll", "select"),
        *("epoll_wait", "ioctl", "fcntl", "clock_nanosleep", "nanosleep", "futex"),
    )
)
PY_FRAME = re.compile(r"\((/[^:()]+\.py):\d+\)$")


def component(stack: str) -> str:
    """A py-spy stack's category: OpenSSL when its innermost frame is in
    libssl/libcrypto; Python's ssl module when its innermost Python frame is
    ssl.py; else the package of the innermost Python frame that belongs to
    one (httpx, httpcore, h11, the mesh's parts), which is charged with the
    stdlib and C code it called."""
    frames = stack.split(";")
    if frames[-1].split(" (")[0] in SYSCALLS:
        return SYSCALL  # counted by perf, as CPU (py-spy cannot tell run from wait there)
    if "libssl.so" in frames[-1] or "libcrypto.so" in frames[-1]:
        return "OpenSSL (libssl, libcrypto)"
    paths = [m.group(1) for m in map(PY_FRAME.search, reversed(frames)) if m]
    if paths and paths[0].endswith("/ssl.py"):
        return "Python's ssl module (ssl.py, _ssl)"
    for path in paths:
        for needle, name in COMPONENTS:
            if needle in path:
                return name
    return "stdlib and the bench loop (load_worker.py)" if paths else "native, no Python frame"


def pyspy(running: Running, command: dict[str, object], out: Path) -> Counter[str]:
    """One scenario under py-spy (--native, 1,000 Hz, idle samples dropped):
    categories of the requesting thread's samples."""
    spy = subprocess.Popen(
        [str(PY_SPY), *PY_SPY_RECORD, "-o", str(out), "-p", str(running.worker.popen.pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    running.worker.run(command)
    spy.send_signal(signal.SIGINT)
    spy.wait(60)
    counts: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        # The requesting thread only: the mesh's background threads wait in
        # futexes py-spy often cannot name, and would count as running.
        if "load_worker.py" in stack and n.isdigit():
            counts[component(stack)] += int(n)
    return counts


def syscalls_per_request(running: Running, n: int, out: Path) -> Counter[str]:
    pid = running.worker.popen.pid
    tracer = subprocess.Popen(
        ["strace", "-f", "-c", "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    running.worker.run({"op": "closed", "n": n})
    tracer.send_signal(signal.SIGINT)
    tracer.wait(30)
    counts: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            counts[parts[-1]] += int(parts[3])
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--strace", action="store_true")
    parser.add_argument("--pyspy", action="store_true", help="and a py-spy pass per scenario")
    args = parser.parse_args(argv)
    needed = [("perf", shutil.which("perf"))]
    needed += [("py-spy (pip install py-spy)", PY_SPY.exists() or None)] if args.pyspy else []
    needed += [("strace", shutil.which("strace"))] if args.strace else []
    missing = [name for name, found in needed if not found]
    if missing:
        parser.error(f"not installed: {', '.join(missing)}")
    plan = {
        "closed loop": {"op": "closed", "n": args.requests},
        f"open loop @ {args.rate} req/s": {
            "op": "open",
            "n": int(args.rate * args.seconds),
            "rate": args.rate,
        },
    }
    with tempfile.TemporaryDirectory(prefix="mesh-profile-tls-") as tmp:
        (Path(tmp) / "data").mkdir()
        lab = LocalMesh(Path(tmp) / "data")
        running: dict[str, Running] = {}
        try:
            setup = start_lab(lab)
            running = {name: start(setup) for name, start in ROWS}
            for run in running.values():
                run.worker.run({"op": "closed", "n": 300})
            report = []
            for scenario, command in plan.items():
                cpu: Counter[str] = Counter()
                requests: Counter[str] = Counter()
                shares: dict[str, Counter[str]] = {name: Counter() for name in running}
                server_cpu: Counter[str] = Counter()
                server_shares: dict[str, Counter[str]] = {name: Counter() for name in running}
                for r in range(args.rounds):
                    names = list(running)
                    for name in names[r % len(names) :] + names[: r % len(names)]:
                        print(f"  {scenario} {name} round {r}", file=sys.stderr, flush=True)
                        answer, counts, s_cpu, s_counts = profiled(
                            running[name], command, Path(tmp) / "perf.data"
                        )
                        cpu[name] += answer["cpu"]
                        requests[name] += int(command["n"])  # type: ignore[call-overload]
                        shares[name].update(counts)
                        server_cpu[name] += s_cpu
                        server_shares[name].update(s_counts)
                report.append(f"\n### {scenario}, µs of client CPU per request\n")
                report.append(_table(running, cpu, requests, shares))
                report.append(f"\n### {scenario}, µs of the server's CPU per request\n")
                report.append(_table(running, server_cpu, requests, server_shares))
                if args.pyspy:
                    spied = {
                        n: pyspy(r, command, Path(tmp) / "spy.txt") for n, r in running.items()
                    }
                    report.append(
                        f"\n### {scenario}, client by component (py-spy), µs per request\n"
                    )
                    report.append(_spy_table(running, cpu, requests, shares, spied))
            if args.strace:
                report.append("\n### system calls per request (strace -f -c, 500 requests)\n")
                report.append(_strace_table(running, Path(tmp) / "strace.txt"))
            print("\n".join(report))
        finally:
            for run in running.values():
                run.worker.close()
            lab.close()


def _us(cpu: Counter[str], requests: Counter[str], name: str) -> float:
    return cpu[name] / requests[name] * 1e6 if requests[name] else 0.0


def _table(
    running: dict[str, Running],
    cpu: Counter[str],
    requests: Counter[str],
    shares: dict[str, Counter[str]],
) -> str:
    categories = sorted({c for s in shares.values() for c in s}, key=lambda c: (c.split(":")[0], c))
    headers = ["where", *running]
    lines = []
    for category in categories:
        cells = [category]
        for name in running:
            total = sum(shares[name].values()) or 1
            per_request = cpu[name] / requests[name] * 1e6
            cells.append(f"{per_request * shares[name][category] / total:.1f}")
        lines.append(cells)
    lines.append(["**all (process CPU)**"] + [f"**{_us(cpu, requests, n):.0f}**" for n in running])
    lines.append(["perf samples"] + [str(sum(shares[n].values())) for n in running])
    return md_table(headers, lines)


NOT_USER = ("kernel", "OpenSSL", "_ssl")


def _spy_table(
    running: dict[str, Running],
    cpu: Counter[str],
    requests: Counter[str],
    perf: dict[str, Counter[str]],
    spied: dict[str, Counter[str]],
) -> str:
    """The user-space CPU perf found outside OpenSSL and _ssl (interpreter,
    libc, other native), split by py-spy's shares of its samples that were
    neither in a system call nor in OpenSSL."""
    kept = {
        name: Counter({c: k for c, k in spied[name].items() if c != SYSCALL and "OpenSSL" not in c})
        for name in running
    }
    user = {}
    for name in running:
        total = sum(perf[name].values()) or 1
        outside = sum(
            k for c, k in perf[name].items() if not c.startswith(("kernel", "OpenSSL", "_ssl"))
        )
        user[name] = _us(cpu, requests, name) * outside / total
    categories = sorted({c for k in kept.values() for c in k})
    lines = []
    for category in categories:
        cells = [category]
        for name in running:
            n = sum(kept[name].values()) or 1
            cells.append(f"{user[name] * kept[name][category] / n:.1f}")
        lines.append(cells)
    lines.append(
        ["**user space outside OpenSSL (perf)**"] + [f"**{user[n]:.0f}**" for n in running]
    )
    lines.append(["py-spy samples kept"] + [str(sum(kept[n].values())) for n in running])
    return md_table(["where", *running], lines)


def _strace_table(running: dict[str, Running], out: Path) -> str:
    n = 500
    counts = {name: syscalls_per_request(run, n, out) for name, run in running.items()}
    calls = sorted({c for s in counts.values() for c in s})
    lines = [[c] + [f"{counts[name][c] / n:.2f}" for name in running] for c in calls]
    lines.append(["**all**"] + [f"**{sum(counts[name].values()) / n:.2f}**" for name in running])
    return md_table(["system call", *running], lines)


if __name__ == "__main__":
    main()
