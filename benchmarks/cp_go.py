"""Control plane at scale, with the load generator in Go (adsload/main.go).

The Python load clients cost 160-220 µs of CPU per stream per push, on the
same 2 cores as the control plane: at 10,000 clients they bounded what the
`cp` table could show. The Go clients do the same work (one ADS stream and
connection per client, subscribing like the library, ACKing everything) for
much less, and speak State of the World or Delta. For each variant and size:
- connect storm: from "go" until every client has ACKed its endpoints;
- CHANGES route changes (a VirtualService rewritten): from the write until
  each client saw the new route (p50/p99), CPU of the control plane and of
  the clients per change;
- a control plane restart: the process is killed, the route changes while it
  is down, a new one starts, and every client resumes against it; the bytes
  (serialized responses) and resources it was sent until each client has an
  answer for every type it follows. SotW re-sends everything; Delta, resuming
  with initial_resource_versions, only what changed.

The binary is built by `make adsload` (or here, on first use) from the Go
module proxy's packages into ~/.cache/proxyless-mesh/, outside the clone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import Verdict, md_table, process_tree, tree_cpu_seconds, tree_rss_kb
from cp_scale import PORT, LoadProcesses, start_quiet_control_plane
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from meshlab import LocalMesh, service_entry, subsets_rule, weighted_route

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "adsload"
CLIENTS_PER_PROCESS = 10_000  # one Go process schedules goroutines on every core
CHANGES = 3
STREAMS_PER_PROCESS = 18_000
"""A control plane process's share of streams, below the open-file limit
here (20,000, not raisable): 50,000 clients need `--cpgo-workers 4`."""
SERVICES = 10
"""Hosts every client calls (follows): a client of a mesh calls several
services, and a change (here, one route's weights) touches one of them."""
HOSTS = [f"scale{i}.default.mesh" for i in range(SERVICES)]
NOTE = (
    "Load generator in Go (benchmarks/adsload, grpc-go + go-control-plane's protos): one "
    "ADS stream and TCP connection per client, subscribing like the library (an LDS name "
    f"for each of the {SERVICES} services it calls, then RDS/CDS/EDS by reference), ACKing "
    "every response; SotW or Delta. The change is to one service's route. A fresh control "
    "plane (log level WARNING) per row. Storm: all connect at once, until every client "
    f"has endpoints. {CHANGES} route changes (file write -> client saw the new route, "
    "includes the watcher's 20 ms debounce: inotify sees the write); CPU per push = "
    "utime+stime from the write until the "
    "last client saw it, mean per change, control plane and clients apart (same 2 cores). "
    "Restart: control plane killed, the route changed while down, a new one started, every "
    "client resumes: serialized response bytes until each has an answer for every type."
)


def _binary_path() -> Path:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((SOURCE / name).read_bytes())
    # Not $XDG_CACHE_HOME: the tests point that at a temporary directory per
    # test, and a build is worth keeping across them (as Go's module cache is).
    return Path.home() / ".cache" / "proxyless-mesh" / f"adsload-{digest.hexdigest()[:12]}"


def built() -> bool:
    """Whether the binary for the current sources exists (a first build
    fetches Go modules and compiles for a minute or more)."""
    return _binary_path().exists()


def binary() -> Path:
    """The adsload binary for the current sources, built once per change of them."""
    path = _binary_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["go", "build", "-o", str(path), "."], cwd=SOURCE, check=True)
    return path


class GoClients(LoadProcesses):
    """The adsload processes of one run."""

    def __init__(self, lab: LocalMesh, n: int, timeout: float, delta: bool) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        exe = str(binary())
        for index, start in enumerate(range(0, n, CLIENTS_PER_PROCESS)):
            count = min(CLIENTS_PER_PROCESS, n - start)
            argv = [exe, "-xds", lab.xds_address, "-count", str(count), "-timeout", str(timeout)]
            # a source address per process: one has ~28,000 ephemeral ports to
            # the control plane's one address, fewer than 50,000 clients need
            argv += ["-source", f"127.0.0.{index + 1}"]
            authorities = ",".join(f"{host}:{PORT}" for host in HOSTS)
            argv += ["-authority", authorities, "-id-prefix", f"go-{start}-"]
            self.procs.append(
                subprocess.Popen(
                    [*argv, *(["-delta"] if delta else [])],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=open(lab.workdir / f"adsload-{start}.log", "w"),  # noqa: SIM115
                    text=True,
                )
            )
        self.ask_all(None)


@dataclass
class GoResult:
    variant: str
    clients: int
    synced: int
    storm_s: float
    storm_cpu_s: float
    rss_per_client_kb: float
    acked: int
    p50_ms: float
    p99_ms: float
    push_cpu_s: float
    clients_cpu_s: float
    resynced: int
    resume_s: float
    resume_bytes: int
    resume_resources: int
    resume_cpu_s: float


def _total(answers: list[dict[str, object]], key: str) -> int:
    return sum(int(a[key]) for a in answers)  # type: ignore[call-overload]


def _variant(delta: bool, workers: int, engine: str = "grpc") -> str:
    kind = "Delta" if delta else "SotW"
    return kind + (f", {workers} ADS workers" if workers > 1 else "") + ENGINE_LABEL[engine]


ENGINE_LABEL = {"native": ", native engine", "grpc": ", grpc engine"}
"""How a row names the xDS port's transport (`--xds-engine`)."""


def measure(
    workdir: Path, n: int, timeout: float, delta: bool, workers: int = 1, engine: str = "grpc"
) -> GoResult:
    workdir.mkdir(parents=True, exist_ok=True)
    lab = LocalMesh(workdir)
    clients: GoClients | None = None
    try:
        endpoints = [("127.0.0.1", 9, {"version": "v1"}), ("127.0.0.1", 10, {"version": "v2"})]
        for i, host in enumerate(HOSTS):
            lab.write_config(
                f"scale{i}.yaml",
                service_entry(host, PORT, endpoints) + "\n---\n" + subsets_rule(host, ["v1", "v2"]),
            )
            lab.write_config(f"route{i}.yaml", weighted_route(host, {"v1": 90, "v2": 10}))
        cp = start_quiet_control_plane(lab, workers, engine=engine)
        pid = int(cp.popen.pid)
        clients = GoClients(lab, n, timeout, delta)
        rss_before = tree_rss_kb(pid)
        storm_cpu = tree_cpu_seconds(pid)
        go = time.monotonic()
        synced_answers = clients.ask_all("go")
        storm_cpu = tree_cpu_seconds(pid) - storm_cpu
        synced = _total(synced_answers, "synced")
        storm = max(float(a["last"]) for a in synced_answers) - go  # type: ignore[arg-type]
        synced_at = sorted(float(t) - go for a in synced_answers for t in a["times"])  # type: ignore[attr-defined]
        why = next((a["why"] for a in synced_answers if a["why"]), "")
        print(
            f"    storm: synced p50 {synced_at[len(synced_at) // 2]:.2f} s, p90 "
            f"{synced_at[len(synced_at) * 9 // 10]:.2f} s; "
            f"{_total(synced_answers, 'resets')} stream resets {why}",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(0.5)
        rss_after = tree_rss_kb(pid)
        hist = HdrHistogram(1, 600_000_000, 3)
        acked, push_cpu, clients_cpu = n, 0.0, 0.0
        for change in range(CHANGES):
            clients.ask_all("arm")
            cpu0, clients0 = tree_cpu_seconds(pid), clients.cpu_seconds()
            written = time.monotonic()
            weights = {"v1": 10, "v2": 90} if change % 2 == 0 else {"v1": 90, "v2": 10}
            lab.write_config("route0.yaml", weighted_route(HOSTS[0], weights))
            waited = clients.ask_all("wait")
            push_cpu += tree_cpu_seconds(pid) - cpu0
            clients_cpu += clients.cpu_seconds() - clients0
            acks = [float(t) for a in waited for t in a["acks"]]  # type: ignore[attr-defined]
            acked = min(acked, len(acks))
            for t in acks:
                hist.record_value(max(1, int((t - written) * 1e6)))
        print(
            f"    storm {storm:.1f} s ({storm_cpu:.1f} s CP CPU), change p99 "
            f"{hist.get_value_at_percentile(99) / 1e6:.2f} s, CP CPU per push "
            f"{push_cpu / CHANGES:.2f} s, RSS per client "
            f"{(rss_after - rss_before) / max(1, synced):.1f} KB",
            file=sys.stderr,
            flush=True,
        )
        # The restart: kill, change while down, start anew, resume. The ADS
        # workers too (after the leader, which would replace them): left
        # alone they would serve on until they next write to it.
        workers_of_cp = process_tree(pid)[1:]
        cp.kill()
        for child in workers_of_cp:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        lab.procs.remove(cp)
        lab.write_config("route0.yaml", weighted_route(HOSTS[0], {"v1": 50, "v2": 50}))
        # while it starts, n clients retry every 0.1-1 s: at 50,000 that
        # starves a start on 2 cores for longer than the default 20 s
        new = start_quiet_control_plane(
            lab, workers, ready_timeout=max(20.0, n / 500), engine=engine
        )
        new_pid = int(new.popen.pid)
        cpu0 = tree_cpu_seconds(new_pid)
        resumed_at = time.monotonic()
        resumed = clients.ask_all(f"reconnect {lab.xds_address}")
        return GoResult(
            variant=_variant(delta, workers, engine),
            clients=n,
            synced=synced,
            storm_s=storm,
            storm_cpu_s=storm_cpu,
            rss_per_client_kb=(rss_after - rss_before) / max(1, synced),
            acked=acked,
            p50_ms=hist.get_value_at_percentile(50) / 1e3,
            p99_ms=hist.get_value_at_percentile(99) / 1e3,
            push_cpu_s=push_cpu / CHANGES,
            clients_cpu_s=clients_cpu / CHANGES,
            resynced=_total(resumed, "resynced"),
            resume_s=max(float(a["last"]) for a in resumed) - resumed_at,  # type: ignore[arg-type]
            resume_bytes=_total(resumed, "bytes"),
            resume_resources=_total(resumed, "resources"),
            resume_cpu_s=tree_cpu_seconds(new_pid) - cpu0,
        )
    finally:
        if clients is not None:
            clients.close()
        lab.close()


def run(
    workdir: Path,
    sizes: list[int],
    timeout: float,
    workers: tuple[int, ...] = (),
    engines: tuple[str, ...] = ("grpc",),
) -> tuple[str, list[Verdict]]:
    """SotW and Delta per size, then Delta with each count of ADS `workers`
    (the count whose processes each hold under STREAMS_PER_PROCESS streams);
    each row once per xDS port transport in `engines`, alternating (A/B)."""
    results: list[GoResult] = []
    for n in sizes:
        plan = [(False, 1), (True, 1), *((True, w) for w in workers if w > 1)]
        plan = [(delta, w) for delta, w in plan if n / w < STREAMS_PER_PROCESS]
        for delta, count in plan:
            for engine in engines:
                variant = _variant(delta, count, engine)
                print(
                    f"  control plane, Go clients: {n} {variant} ...", file=sys.stderr, flush=True
                )
                where = workdir / f"go-{n}-{len(results)}"
                results.append(measure(where, n, timeout, delta, count, engine))
    rows = [
        [
            f"{r.clients:,} {r.variant}",
            f"{r.storm_s:.2f}" + ("" if r.synced == r.clients else f" ({r.synced:,} synced)"),
            f"{r.storm_cpu_s:.2f}",
            f"{r.p50_ms:.0f}",
            f"{r.p99_ms:.0f}" + ("" if r.acked == r.clients else f" ({r.acked:,} ACKed)"),
            f"{r.push_cpu_s:.2f}",
            f"{r.clients_cpu_s:.2f}",
            f"{r.rss_per_client_kb:.1f}",
            f"{r.resume_s:.2f}" + ("" if r.resynced == r.clients else f" ({r.resynced:,})"),
            f"{r.resume_bytes / 1e6:.2f}",
            f"{r.resume_resources:,}",
            f"{r.resume_cpu_s:.2f}",
        ]
        for r in results
    ]
    table = md_table(
        [
            "clients",
            "connect storm (s)",
            "CP CPU in storm (s)",
            "change seen p50 (ms)",
            "p99 (ms)",
            "CP CPU per push (s)",
            "clients' CPU per push (s)",
            "CP RSS per client (KB)",
            "restart: all resumed (s)",
            "resume MB sent",
            "resources sent",
            "new CP's CPU (s)",
        ],
        rows,
    )
    return table, _verdicts(results)


def _verdicts(results: list[GoResult]) -> list[Verdict]:
    out = [v for r in results if r.clients >= 50_000 for v in _fifty_thousand(r)]
    results = [r for r in results if r.clients <= 10_000]
    if not results:
        return out
    largest = max(r.clients for r in results)
    by = {r.variant: r for r in results if r.clients == largest}
    for label in ENGINE_LABEL.values():
        out += _ten_thousand(by.get("Delta" + label), by.get("SotW" + label), largest, label)
    return out


def _ten_thousand(
    delta: GoResult | None, sotw: GoResult | None, largest: int, label: str
) -> list[Verdict]:
    """The issue's targets for 10,000 clients, for one transport."""
    out: list[Verdict] = []
    at = ("" if largest >= 10_000 else f" (measured at {largest:,})") + label
    if delta is not None:
        ok = delta.acked == delta.clients and largest >= 10_000
        out.append(
            Verdict(
                f"10,000 clients (Go, Delta): change seen within 1 s at p99{at}",
                f"{delta.p99_ms / 1000:.2f} s / 1 s = {delta.p99_ms / 1000:.2f}",
                (ok and delta.p99_ms < 1000) if largest >= 10_000 else None,
            )
        )
        out.append(
            Verdict(
                f"10,000 clients (Go, Delta): connect storm under 5 s{at}",
                f"{delta.storm_s:.2f} s / 5 s = {delta.storm_s / 5:.2f}",
                (delta.synced == delta.clients and delta.storm_s < 5)
                if largest >= 10_000
                else None,
            )
        )
    if delta is not None and sotw is not None and sotw.resume_bytes:
        ratio = delta.resume_bytes / sotw.resume_bytes
        out.append(
            Verdict(
                f"reconnect storm after a restart: resume sends < 10 % of a full re-send{at}",
                f"{delta.resume_bytes:,} B / {sotw.resume_bytes:,} B = {ratio:.3f} (target 0.10)",
                ratio < 0.10 and delta.resynced == delta.clients,
            )
        )
    return out


def _fifty_thousand(r: GoResult) -> list[Verdict]:
    """The issue's targets for 50,000 clients on one control plane."""
    complete = r.synced == r.clients and r.acked == r.clients
    return [
        Verdict(
            f"{r.clients:,} clients ({r.variant}): under 50 KB of memory per client",
            f"{r.rss_per_client_kb:.1f} KB / 50 KB = {r.rss_per_client_kb / 50:.2f}",
            complete and r.rss_per_client_kb < 50,
        ),
        Verdict(
            f"{r.clients:,} clients ({r.variant}): change seen within 3 s at p99",
            f"{r.p99_ms / 1000:.2f} s / 3 s = {r.p99_ms / 3000:.2f}",
            complete and r.p99_ms < 3000,
        ),
    ]
