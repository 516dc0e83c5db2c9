"""Data path: every row of a section measured side by side, in alternating rounds.

Scenarios: closed loop (one connection, sequential requests, as fast as they
go: throughput) and open loop at fixed rates (latency at a load the slowest
row can carry). Each round runs every row once, in an order rotated per round,
so a slow minute on a noisy machine hits all rows alike. Histograms of all
rounds are merged per row (HdrHistogram, microseconds).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from common import Verdict, md_table, new_histogram, percentile_ms
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from rows import ENVOY_MTLS, MESH_MTLS, MTLS_BASE, MTLS_NEW, MTLS_PLAIN_NEW, Row, Running, Setup


@dataclass(frozen=True)
class Scenario:
    name: str  # "closed" or "open @ N req/s"
    command: dict[str, object]

    @property
    def is_closed(self) -> bool:
        return self.command["op"] == "closed"


@dataclass
class Tally:
    """One row's measurements in one scenario, summed over rounds."""

    hist: HdrHistogram = field(default_factory=new_histogram)
    requests: int = 0
    errors: int = 0
    elapsed: float = 0.0
    client_cpu: float = 0.0
    side_cpu: float = 0.0
    rss_kb: int = 0

    def add(self, answer: dict[str, object], side_cpu: float, side_rss: int) -> None:
        hist = HdrHistogram.decode(answer["hist"])
        self.hist.add(hist)
        self.requests += int(hist.get_total_count())
        self.errors += int(answer["errors"])  # type: ignore[call-overload]
        self.elapsed += float(answer["elapsed"])  # type: ignore[arg-type]
        self.client_cpu += float(answer["cpu"])  # type: ignore[arg-type]
        self.side_cpu += side_cpu
        self.rss_kb = max(self.rss_kb, int(answer["rss_kb"]) + side_rss)  # type: ignore[call-overload]

    def p(self, q: float) -> float:
        return percentile_ms(self.hist, q)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0

    @property
    def rps_per_core(self) -> float:
        cpu = self.client_cpu + self.side_cpu
        return self.requests / cpu if cpu else 0.0

    def per_1k(self, cpu: float) -> float:
        return cpu / self.requests * 1000 if self.requests else 0.0


Results = dict[str, dict[str, Tally]]  # scenario name -> row name -> tally


def scenarios(closed_requests: int, rates: Sequence[int], open_seconds: float) -> list[Scenario]:
    found = [Scenario("closed loop", {"op": "closed", "n": closed_requests})]
    for rate in rates:
        n = max(10, int(rate * open_seconds))
        found.append(Scenario(f"open loop @ {rate} req/s", {"op": "open", "n": n, "rate": rate}))
    return found


def measure(
    setup: Setup, rows: Sequence[Row], plan: Sequence[Scenario], rounds: int, warmup: int
) -> Results:
    running: dict[str, Running] = {}
    results: Results = {s.name: {} for s in plan}
    try:
        for row in rows:
            if row.start is not None:
                running[row.name] = row.start(setup)
        for run in running.values():  # warm-ups one at a time: they measure nothing
            run.worker.run({"op": "closed", "n": warmup})
        names = list(running)
        for scenario in plan:
            print(f"  {rows[0].section}: {scenario.name} ...", file=sys.stderr, flush=True)
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    run = running[name]
                    side0 = run.side_cpu()
                    answer = run.worker.run(dict(scenario.command))
                    tally = results[scenario.name].setdefault(name, Tally())
                    tally.add(answer, run.side_cpu() - side0, run.side_rss_kb())
    finally:
        for run in running.values():
            run.worker.close()
    return results


def _us(ms: float) -> str:
    return f"{ms * 1000:+.0f}"


def scenario_table(rows: Sequence[Row], scenario: Scenario, tallies: dict[str, Tally]) -> str:
    base = tallies.get(rows[0].name)
    headers = ["path", "p50 (ms)", "p90 (ms)", "p99 (ms)", "added p50 (us)", "added p90 (us)"]
    headers += ["added p99 (us)", "req/s", "req/s per core", "client CPU s/1k req"]
    headers += ["sidecar CPU s/1k req", "RSS added (MB)", "errors"]
    lines = []
    for row in rows:
        t = tallies.get(row.name)
        if t is None or base is None:
            reason = row.missing or "not started"
            lines.append([row.name, f"not measured: {reason}"] + [""] * (len(headers) - 2))
            continue
        lines.append(
            [
                row.name,
                f"{t.p(50):.3f}",
                f"{t.p(90):.3f}",
                f"{t.p(99):.3f}",
                _us(t.p(50) - base.p(50)),
                _us(t.p(90) - base.p(90)),
                _us(t.p(99) - base.p(99)),
                f"{t.rps:,.0f}",
                f"{t.rps_per_core:,.0f}",
                f"{t.per_1k(t.client_cpu):.3f}",
                f"{t.per_1k(t.side_cpu):.3f}" if t.side_cpu else "-",
                f"{(t.rss_kb - base.rss_kb) / 1024:+.1f}",
                str(t.errors),
            ]
        )
    return md_table(headers, lines)


def http_verdicts(plan: Sequence[Scenario], results: Results) -> list[Verdict]:
    """The issue's data-path targets, as ratios. Until the library has mTLS
    the mesh side is its plaintext row, and the verdict says so."""
    verdicts = []
    mesh_name = MESH_MTLS
    caveat = ""
    for scenario in plan:
        tallies = results[scenario.name]
        if mesh_name not in tallies:
            mesh_name, caveat = (
                "mesh transport, plaintext",
                " (mesh plaintext: no library mTLS yet)",
            )
        base, mesh, envoy = (
            tallies.get("plain httpx"),
            tallies.get(mesh_name),
            tallies.get(ENVOY_MTLS),
        )
        if base is None or mesh is None or envoy is None:
            continue
        for q in (50, 99):
            mesh_added = mesh.p(q) - base.p(q)
            envoy_added = envoy.p(q) - base.p(q)
            label = f"{scenario.name}: mesh-added p{q} < 1/10 of Envoy mTLS pair's{caveat}"
            figures = f"{mesh_added * 1000:+.0f} us / {envoy_added * 1000:+.0f} us"
            if envoy_added <= 0:
                # The baseline was slower than the sidecars (it queued: a rate
                # too close to capacity, or a noisy machine): no ratio to judge.
                verdicts.append(Verdict(label, f"{figures}: baseline slower", None))
                continue
            ratio = mesh_added / envoy_added
            verdicts.append(Verdict(label, f"{figures} = {ratio:.3f}", ratio < 0.1))
        if scenario.is_closed:
            for label, m, b in (
                ("req/s", mesh.rps, base.rps),
                ("req/s per core", mesh.rps_per_core, base.rps_per_core),
            ):
                verdicts.append(
                    Verdict(
                        f"closed loop: mesh {label} >= 90% of plain httpx{caveat}",
                        f"{m:,.0f} / {b:,.0f} = {m / b:.3f}",
                        m / b >= 0.9,
                    )
                )
    return verdicts


def handshake_note(rows: Sequence[Row], tallies: dict[str, Tally]) -> str:
    """The mTLS figures of issue 5 from the mtls section's closed loop: the
    handshake's cost (mTLS minus plaintext, both connecting per request) and
    mTLS's per-request cost on a kept-alive connection."""
    names = [r.name for r in rows]
    keep_tls = next((n for n in names if "mTLS, kept-alive" in n), "")
    needed = (MTLS_BASE, keep_tls, MTLS_PLAIN_NEW, MTLS_NEW)
    if any(n not in tallies for n in needed):
        return "mTLS figures: not measured (a row is missing)."
    base, tls, plain_new, tls_new = (tallies[n] for n in needed)
    lines = []
    for q in (50, 99):
        handshake = tls_new.p(q) - plain_new.p(q)
        per_request = tls.p(q) - base.p(q)
        lines.append(
            f"- p{q}: connect + mTLS handshake costs {handshake * 1000:+.0f} us more than a "
            f"plaintext connect; on a kept-alive connection mTLS adds "
            f"{per_request * 1000:+.0f} us per request."
        )
    cpu = tls_new.per_1k(tls_new.client_cpu) - plain_new.per_1k(plain_new.client_cpu)
    lines.append(f"- client CPU of a handshake: {cpu:+.3f} s per 1,000 new connections.")
    return "\n".join(lines)
