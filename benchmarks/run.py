"""`make bench`: what the mesh costs, measured side by side in one run.

    python benchmarks/run.py [--quick] [--only http,grpc,balancer,cp,propagation]

Sections (benchmarks/README.md has the method):
  http         data path, HTTP: plain httpx vs the mesh transport vs an Envoy
               sidecar pair (mTLS and plaintext) vs an ingress gateway
               (`meshctl gateway run`, plaintext or ISTIO_MUTUAL upstream),
               1 KB each way, closed loop and open loop at fixed rates
  grpc         data path, gRPC unary 1 KB: plain channel vs library mode vs
               grpcio's native xDS
  resilience   mesh route with Istio's default retry policy vs attempts: 0
  mtls         mesh mTLS vs plaintext, new connection per request and kept alive
  outage       upstream attempts per request in a total outage, budget vs none
  policy       PolicySet.check cost for 1 / 10 / 100 AuthorizationPolicies
  balancer     pick cost per policy (benchmarks/bench_balancer.py)
  telemetry    telemetry cost per request (benchmarks/bench_telemetry.py)
  native       native core: EDS decode CPU, import CPU and RSS
  decision     the per-request decision in isolation (route + split, whole decision)
  cp           control plane with 100 / 1,000 / 10,000 connected xDS clients
  cpgo         control plane with 10,000 Go xDS clients, SotW and Delta: change,
               connect storm, restart with resume (benchmarks/cp_go.py)
  propagation  VirtualService file write -> our library's routing snapshot
  kube         the control plane on a real Kubernetes API server: 1,000 Services,
               10,000 endpoints, 100 clients, 50 endpoint changes/s (bench_kube.py)
`--only data` means http,grpc. Every table is printed at the end and written
to benchmarks/results/ (bench.md, latency.png).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import bench_outage
import bench_renewal
import common  # also makes examples/ importable
import cp_go
import cp_scale
import data_path
import propagation
from chart import write_chart
from common import Verdict, verdict_table
from lab import HTTP_HOST, HTTP_PORT, start_lab
from mesh_control_plane.xds.native_engine import native_engine_available
from meshlab import LocalMesh
from rows import ROWS
from sidecars import ENVOY

HERE = Path(__file__).resolve().parent
SECTIONS = (
    "http",
    "grpc",
    "resilience",
    "mtls",
    "outage",
    "policy",
    "balancer",
    "telemetry",
    "native",
    "decision",
    "cp",
    "cpgo",
    "propagation",
    "kube",
)
LAB_SECTIONS = {"http", "grpc", "resilience", "mtls", "outage", "propagation"}
TITLES = {
    "http": "Data path, HTTP: 1 KB each way, loopback",
    "grpc": "Data path, GRPC: 1 KB each way, loopback",
    "resilience": "Resilience engine, no-failure path: default retry policy vs retries off",
    "mtls": "mTLS through the mesh: handshake per request vs kept-alive connection",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--requests", type=int, default=2000, help="closed loop, per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--rates", default="100,250", help="open-loop rates, req/s")
    parser.add_argument("--open-seconds", type=float, default=3.0, help="open loop, per round")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--cp-clients", default="100,1000,10000")
    parser.add_argument("--cp-timeout", type=float, default=120.0)
    parser.add_argument("--cpgo-clients", default="10000")
    parser.add_argument(
        "--cpgo-workers", default="2", help="also Delta with these counts of ADS workers"
    )
    parser.add_argument(
        "--cpgo-engines",
        default="native,grpc" if native_engine_available() else "grpc",
        help="xDS port transports, alternating (A/B); default: both when native is built",
    )
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--quick", action="store_true", help="a smoke run (tests use it)")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rounds, args.rates, args.open_seconds = 60, 1, "100", 0.3
        args.warmup, args.cp_clients, args.cp_timeout, args.changes = 10, "20", 20.0, 2
        args.cpgo_clients, args.cpgo_workers = "20", ""
        args.cpgo_engines = args.cpgo_engines.split(",")[0]
    only = set(args.only.replace("data", "http,grpc").split(","))
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in only]
    return args


def optional_section(name: str, quick: bool) -> str:
    """bench_<name>.py's run(quick=...), written separately; a missing file is
    reported, not fatal."""
    path = HERE / f"bench_{name}.py"
    if not path.exists():
        return f"{path.name} is missing: no {name} figures in this run."
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    if spec is None or spec.loader is None:
        return f"{path.name} could not be loaded."
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run: Callable[..., str] = module.run
    return run(quick=quick)


def machine_line() -> str:
    envoy = subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True, check=False)
    version = envoy.stdout.strip().split("version: ")[-1].split("/")[1:2]
    return (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, Envoy {version[0] if version else '?'}, "
        f"{platform.machine()} Linux {platform.release()}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r]
    started = time.monotonic()
    report = [
        f"# make bench: {'quick smoke run' if args.quick else 'full run'}",
        "",
        machine_line(),
    ]
    verdicts: list[Verdict] = []
    charts: dict[str, data_path.Results] = {}
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        if LAB_SECTIONS & set(args.sections):
            (Path(tmp) / "data").mkdir()
            lab = LocalMesh(Path(tmp) / "data")
            try:
                setup = start_lab(lab)
                full = data_path.scenarios(args.requests, rates, args.open_seconds)
                for section in ("http", "grpc", "resilience", "mtls"):
                    if section not in args.sections:
                        continue
                    # The extra sections compare per-request cost: closed loop only.
                    plan = full if section in ("http", "grpc") else full[:1]
                    rows = [r for r in ROWS if r.section == section]
                    results = data_path.measure(setup, rows, plan, args.rounds, args.warmup)
                    if section in ("http", "grpc"):
                        charts[section] = results
                    report.append(f"\n## {TITLES[section]}\n")
                    report.append(_data_note(section, args, rates))
                    for scenario in plan:
                        report.append(f"\n### {scenario.name}\n")
                        report.append(
                            data_path.scenario_table(rows, scenario, results[scenario.name])
                        )
                    if section == "http":
                        verdicts += data_path.http_verdicts(plan, results)
                    if section == "mtls":
                        report.append("\n" + data_path.handshake_note(rows, results[full[0].name]))
                if "mtls" in args.sections:
                    report.append("\n## Identity: workload certificate latency\n")
                    report.append(bench_renewal.run(lab, args.quick))
                if "outage" in args.sections:
                    print("  outage ...", file=sys.stderr, flush=True)
                    report.append("\n## Resilience: upstream attempts per request, total outage\n")
                    report.append(bench_outage.run(setup, args.quick))
                if "propagation" in args.sections:
                    print("  propagation ...", file=sys.stderr, flush=True)
                    report.append(
                        "\n## Propagation: VirtualService file write -> library snapshot\n"
                    )
                    report.append(propagation.run(lab, HTTP_HOST, HTTP_PORT, args.changes))
            finally:
                lab.close()
        for section, title in (
            ("policy", "Inbound authorization: policy evaluation cost per request"),
            ("balancer", "Balancer: pick cost per policy"),
            ("telemetry", "Telemetry: cost per request"),
            ("kube", "Kubernetes: the control plane on a real API server at scale"),
            ("native", "Native core (issue 25): EDS decode and import cost"),
            ("decision", "Per-request decision in isolation (issue 25)"),
        ):
            if section in args.sections:
                print(f"  {section} ...", file=sys.stderr, flush=True)
                report.append(f"\n## {title}\n")
                report.append(optional_section(section, args.quick))
        if "cp" in args.sections:
            sizes = [int(n) for n in args.cp_clients.split(",") if n]
            table, cp_verdicts = cp_scale.run(Path(tmp) / "cp", sizes, args.cp_timeout)
            verdicts += cp_verdicts
            report.append("\n## Control plane: connected xDS clients, one config change\n")
            report.append(cp_scale.NOTE)
            report.append("\n" + table)
        if "cpgo" in args.sections and args.quick and not cp_go.built():
            report.append("\nGo clients: skipped in --quick until `make adsload` has built them.")
        elif "cpgo" in args.sections:
            sizes = [int(n) for n in args.cpgo_clients.split(",") if n]
            workers = tuple(int(w) for w in args.cpgo_workers.split(",") if w)
            engines = tuple(e for e in args.cpgo_engines.split(",") if e)
            table, cp_verdicts = cp_go.run(
                Path(tmp) / "cpgo", sizes, args.cp_timeout, workers, engines
            )
            verdicts += cp_verdicts
            report.append("\n## Control plane: Go xDS clients, SotW and Delta\n")
            report.append(cp_go.NOTE)
            report.append("\n" + table)
    if verdicts:
        report.append("\n## Targets (issue 9)\n")
        report.append(verdict_table(verdicts))
    report.append(f"\nTotal run time: {time.monotonic() - started:.0f} s.")
    text = "\n".join(report) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "bench-quick" if args.quick else "bench"
    (args.out / f"{name}.md").write_text(text)
    if charts:
        write_chart(args.out / f"{name}-latency.png", charts)
    print(f"written: {args.out / (name + '.md')}" + (f", {name}-latency.png" if charts else ""))


def _data_note(section: str, args: argparse.Namespace, rates: list[int]) -> str:
    what = "unary call" if section == "grpc" else "POST"
    if section not in ("http", "grpc"):
        return (
            f"One client process per row, 1 KB POST and 1 KB answer, {args.rounds} rounds "
            f"alternating between rows, closed loop {args.requests} requests per round. "
            "Added = minus the first row."
        )
    return (
        f"One client process per row, one connection, 1 KB {what} and 1 KB answer. "
        f"{args.rounds} rounds alternating between rows; closed loop {args.requests} "
        f"requests per round, open loop {args.open_seconds:g} s per round at "
        f"{', '.join(map(str, rates))} req/s. Added = minus the first row. req/s per core = "
        "requests / CPU seconds of the client and its sidecars. RSS added = client "
        "process + sidecars minus the baseline client process."
    )


if __name__ == "__main__":
    _ = common
    main()
