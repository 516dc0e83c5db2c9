"""Control plane at scale: N connected xDS clients and config changes.

For each N: a fresh control plane (so memory figures are its own), N raw ADS
clients spread over a few processes (xds_load_clients.py), then:
- connect storm: from "go" until every client has ACKed its endpoints;
- RSS per client: control plane VmRSS after the storm minus before, / N;
- CHANGES changes, one after the other (a VirtualService file rewritten with
  new weights): time from each write until each client ACKed the new route
  version (p50, p99, max over all of them), and the CPU seconds (utime+stime)
  of the control plane and of the load clients over that interval, per change.
  The clients share the machine's cores with the server, so both are shown:
  on 2 cores their sum bounds how fast the push can possibly be.
The time from the write includes the control plane's config watch (inotify,
then a 20 ms debounce); "spread" is from the first client's ACK to each
client's, i.e. the push itself.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import Verdict, cpu_seconds, md_table, rss_kb
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from meshlab import BIN, LocalMesh, Proc, service_entry, start_process, subsets_rule, weighted_route

HERE = Path(__file__).resolve().parent
CLIENTS_PER_PROCESS = 5000
"""Streams per load-client process: 10,000 clients run in two processes, one per
core of the 2-core machine the table is made on. With four processes of 2,500 the
clients' CPU per push was 15-30 % higher (three alternated pairs at 10,000: 197-224
vs 161-178 µs per stream; the control plane's own CPU was the same): more
processes than cores only added wake-ups and context switches."""
CHANGES = 3
NOTE = (
    "A fresh control plane per size (meshctl, log level WARNING); N raw ADS clients "
    f"(up to {CLIENTS_PER_PROCESS:,} per process, one connection each) subscribe like the library: "
    "one LDS name, then RDS/CDS/EDS by reference, ACKing. Connect storm: all start at "
    f"once, until every client has ACKed endpoints. {CHANGES} changes, one after the other: "
    "a VirtualService file rewritten with new weights; ACKed = from the write (includes "
    "the control plane's 20 ms debounce after inotify sees it) until the client ACKed the "
    "new route version, over all changes; push spread = from the first client's ACK. "
    "CPU per push = utime+stime from the write until the last ACK, mean per change, of "
    "the control plane and of all load client processes (they share the cores). RSS "
    "per client = control plane VmRSS after the storm minus before, / clients."
)
HOST = "scale.default.mesh"
PORT = 8080


@dataclass
class ScaleResult:
    clients: int
    synced: int
    storm_s: float
    rss_per_client_kb: float
    acked: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    spread_p99_ms: float
    push_cpu_s: float
    clients_cpu_s: float
    note: str = ""


class LoadProcesses:
    """Load-client processes that each speak the JSON-lines protocol of
    xds_load_clients.py (commands in, one answer per process out)."""

    procs: list[subprocess.Popen[str]]

    def ask_all(self, command: str | None) -> list[dict[str, object]]:
        for proc in self.procs:
            if command is not None and proc.stdin is not None:
                proc.stdin.write(command + "\n")
                proc.stdin.flush()
        answers = []
        for proc in self.procs:
            line = proc.stdout.readline() if proc.stdout is not None else ""
            if not line:
                raise RuntimeError(f"load client process exited ({proc.poll()})")
            answers.append(json.loads(line))
        return answers

    def cpu_seconds(self) -> float:
        """utime+stime of all the client processes together."""
        return sum(cpu_seconds(proc.pid) for proc in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                try:
                    proc.stdin.write("quit\n")
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class LoadClients(LoadProcesses):
    """The Python client processes of one run."""

    def __init__(
        self,
        lab: LocalMesh,
        n: int,
        timeout: float,
        streams_per_connection: int = 1,
        *,
        authority: str = f"{HOST}:{PORT}",
        changed: str = "rds",
    ) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        per = max(1, math.ceil(n / math.ceil(n / CLIENTS_PER_PROCESS)))
        start = 0
        while start < n:
            count = min(per, n - start)
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(HERE / "xds_load_clients.py"),
                        "--xds",
                        lab.xds_address,
                        "--count",
                        str(count),
                        "--authority",
                        authority,
                        "--changed",
                        changed,
                        "--id-prefix",
                        f"load-{start}-",
                        "--timeout",
                        str(timeout),
                        "--streams-per-channel",
                        str(streams_per_connection),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=open(lab.workdir / f"load-{start}.log", "w"),  # noqa: SIM115
                    text=True,
                )
            )
            start += count
        self.ask_all(None)  # wait for every process's "ready"


def start_quiet_control_plane(
    lab: LocalMesh, xds_workers: int = 1, ready_timeout: float = 20.0, engine: str | None = None
) -> Proc:
    """meshctl at log level WARNING: at INFO it logs a line per stream, which
    at 10,000 clients would be a cost of the benchmark, not of the server.
    `engine` None: the control plane's default transport."""
    proc = start_process(
        "control-plane",
        [
            str(BIN / "meshctl"),
            "control-plane",
            "--config-dir",
            str(lab.config_dir),
            "--xds-address",
            "127.0.0.1:0",
            "--admin-address",
            "127.0.0.1:0",
            "--log-level",
            "WARNING",
            "--xds-workers",
            str(xds_workers),
            *(["--xds-engine", engine] if engine else []),
        ],
        lab.workdir,
        timeout=ready_timeout,
    )
    lab.control_plane = proc
    lab.procs.append(proc)
    return proc


def _route(weights: dict[str, int]) -> str:
    return str(weighted_route(HOST, weights))


def measure(
    workdir: Path, n: int, timeout: float, changes: int = CHANGES, streams_per_connection: int = 1
) -> ScaleResult:
    workdir.mkdir(parents=True, exist_ok=True)
    lab = LocalMesh(workdir)
    clients: LoadClients | None = None
    try:
        endpoints = [("127.0.0.1", 9, {"version": "v1"}), ("127.0.0.1", 10, {"version": "v2"})]
        lab.write_config(
            "scale.yaml",
            service_entry(HOST, PORT, endpoints) + "\n---\n" + subsets_rule(HOST, ["v1", "v2"]),
        )
        lab.write_config("route.yaml", _route({"v1": 90, "v2": 10}))
        cp = start_quiet_control_plane(lab)
        pid = int(cp.popen.pid)
        clients = LoadClients(lab, n, timeout, streams_per_connection)
        rss_before = rss_kb(pid)
        go = time.monotonic()
        synced_answers = clients.ask_all("go")
        synced = sum(int(a["synced"]) for a in synced_answers)  # type: ignore[call-overload]
        storm = max(float(a["last"]) for a in synced_answers) - go  # type: ignore[arg-type]
        storm_resets = sum(int(a["resets"]) for a in synced_answers)  # type: ignore[call-overload]
        why = next((str(a["why"]) for a in synced_answers if a["why"]), "")
        time.sleep(0.5)  # let the storm's garbage settle before reading memory
        rss_after = rss_kb(pid)
        hist = HdrHistogram(1, 600_000_000, 3)
        spread = HdrHistogram(1, 600_000_000, 3)
        acked = n
        push_cpu = clients_cpu = 0.0
        push_resets = 0
        for change in range(changes):
            clients.ask_all("arm")
            cpu0, clients0 = cpu_seconds(pid), clients.cpu_seconds()
            written = time.monotonic()
            weights = {"v1": 10, "v2": 90} if change % 2 == 0 else {"v1": 90, "v2": 10}
            lab.write_config("route.yaml", _route(weights))
            waited = clients.ask_all("wait")
            push_cpu += cpu_seconds(pid) - cpu0
            clients_cpu += clients.cpu_seconds() - clients0
            acks = [float(t) for a in waited for t in a["acks"]]  # type: ignore[attr-defined]
            acked = min(acked, len(acks))
            push_resets = sum(int(a["resets"]) for a in waited) - storm_resets  # type: ignore[call-overload]
            first = min(acks, default=written)
            for t in acks:
                hist.record_value(max(1, int((t - written) * 1e6)))
                spread.record_value(max(1, int((t - first) * 1e6)))
        notes = []
        if storm_resets:
            status = why.split("status = ")[-1].split("\n")[0] if "status = " in why else why[:60]
            notes.append(f"{storm_resets} streams reset during the storm ({status}), reopened")
        if push_resets:
            notes.append(f"{push_resets} streams reset during the pushes")
        note = "; ".join(notes)
        if synced < n:
            note += f"; only {synced} of {n} clients synced within {timeout:.0f} s"
        elif acked < n:
            note += f"; only {acked} of {n} clients ACKed a change within {timeout:.0f} s"
        return ScaleResult(
            clients=n,
            synced=synced,
            storm_s=storm,
            rss_per_client_kb=(rss_after - rss_before) / max(1, synced),
            acked=acked,
            p50_ms=hist.get_value_at_percentile(50) / 1e3,
            p99_ms=hist.get_value_at_percentile(99) / 1e3,
            max_ms=hist.get_max_value() / 1e3,
            spread_p99_ms=spread.get_value_at_percentile(99) / 1e3,
            push_cpu_s=push_cpu / max(1, changes),
            clients_cpu_s=clients_cpu / max(1, changes),
            note=note,
        )
    finally:
        if clients is not None:
            clients.close()
        lab.close()


def run(workdir: Path, sizes: list[int], timeout: float) -> tuple[str, list[Verdict]]:
    results = []
    for n in sizes:
        print(f"  control plane: {n} clients ...", file=sys.stderr, flush=True)
        results.append(measure(workdir / f"cp-{n}", n, timeout))
    rows = [
        [
            f"{r.clients:,}",
            f"{r.storm_s:.2f}",
            f"{r.p50_ms:.0f}",
            f"{r.p99_ms:.0f}",
            f"{r.max_ms:.0f}",
            f"{r.spread_p99_ms:.0f}",
            f"{r.push_cpu_s:.2f}",
            f"{r.push_cpu_s / r.clients * 1e6:.0f}",
            f"{r.clients_cpu_s:.2f}",
            f"{r.rss_per_client_kb:.1f}",
            r.note or "",
        ]
        for r in results
    ]
    table = md_table(
        [
            "clients",
            "connect storm (s)",
            "change ACKed p50 (ms)",
            "p99 (ms)",
            "max (ms)",
            "push spread p99 (ms)",
            "CP CPU per push (s)",
            "CP CPU per client per push (µs)",
            "load clients' CPU per push (s)",
            "CP RSS per client (KB)",
            "note",
        ],
        rows,
    )
    verdicts: list[Verdict] = []
    largest = results[-1]
    complete = largest.acked == largest.clients
    measured = f"{largest.p99_ms / 1000:.2f} s / 1 s = {largest.p99_ms / 1000:.2f}"
    if not complete:
        measured += f" ({largest.acked:,} of {largest.clients:,} ACKed)"
    verdicts.append(
        Verdict(
            "a change reaches 10,000 clients in < 1 s at p99 (from the file write)"
            + ("" if largest.clients >= 10_000 else f"; measured at {largest.clients:,}"),
            measured,
            (complete and largest.p99_ms < 1000) if largest.clients >= 10_000 else None,
        )
    )
    verdicts.append(_memory_verdict(results))
    return table, verdicts


def _memory_verdict(results: list[ScaleResult]) -> Verdict:
    """Memory per connected client, judged on what each client adds: the slope
    of RSS growth between the smallest and the largest run, so the one-time
    growth the first clients cause (allocator arenas, the first translation)
    is not charged to them. With a single size, that size's own figure; the
    text always names the worst per-size figure as well."""
    worst = max(r.rss_per_client_kb for r in results)
    small, large = results[0], results[-1]
    if large.synced <= small.synced:
        return Verdict(
            "< 50 KB of control plane memory per connected client",
            f"{worst:.1f} KB / 50 KB = {worst / 50:.2f}",
            worst < 50,
        )
    grown = large.rss_per_client_kb * large.synced - small.rss_per_client_kb * small.synced
    slope = grown / (large.synced - small.synced)
    one_time_mb = (small.rss_per_client_kb - slope) * small.synced / 1024
    return Verdict(
        "< 50 KB of control plane memory per connected client (added per client, "
        f"{small.clients:,} -> {large.clients:,})",
        f"{slope:.1f} KB / 50 KB = {slope / 50:.2f} (per-size worst {worst:.1f} KB at "
        f"{small.clients:,}: {one_time_mb:.1f} MB one-time growth)",
        slope < 50,
    )
