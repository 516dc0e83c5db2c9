"""The benchmark harness runs (a short version), so `make bench` cannot rot.
It checks the harness, not the figures: performance is never asserted here.
`--quick` runs every section (data path, resilience, mTLS, outage, policy,
balancer, telemetry, control plane, propagation) with a handful of requests
and 20 xDS clients;
its report goes to a temporary directory, not benchmarks/results/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.interop  # its tables include Envoy sidecars and grpcio's own xDS client
def test_bench_quick_run_prints_and_writes_every_table(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for row in (
        "| plain httpx |",
        "| mesh transport, plaintext |",
        "| mesh transport, mTLS |",
        "| Envoy sidecar pair, mTLS |",
        "| Envoy sidecar pair, plaintext |",
        "| Envoy ingress gateway (meshctl gateway run), plaintext upstream |",
        "| Envoy ingress gateway, ISTIO_MUTUAL upstream |",
        "| plain channel |",
        "| library mode (mesh.grpc_channel) |",
        "| grpcio native xDS (xds:///) |",
        "| mesh, Istio's default retry policy |",
        "| mesh, retries: {attempts: 0} |",
        "| mesh mTLS, kept-alive |",
        "| mesh mTLS, new connection per request |",
        "| default retry budget |",
        "| no budget (maxRetries set) |",
        "| whole decision |",
    ):
        assert row in out, row
    for title in (
        "## Resilience engine, no-failure path",
        "## mTLS through the mesh",
        "connect + mTLS handshake costs",
        "## Resilience: upstream attempts per request",
        "## Inbound authorization: policy evaluation cost",
        "## Telemetry: cost per request",
        "## Identity: workload certificate latency",
        "### Telemetry overhead per request",
        "## Per-request decision in isolation",
    ):
        assert title in out, title
    # The policy table: one line per policy count, each with three timings.
    for size in (1, 10, 100):
        assert any(
            line.startswith(f"| {size} | ") and line.count("|") == 5 for line in out.splitlines()
        ), size
    # Every measured row answered every request, and rows not built yet say so.
    for line in out.splitlines():
        if line.startswith("| ") and "not measured" not in line and "errors" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) == 13:
                assert cells[-1] == "0", line
    assert "not measured" not in out  # every row exists now
    assert "## Propagation" in out
    assert "## Balancer" in out
    assert "## Control plane" in out
    assert "| 20 |" in out  # the control-plane row: all 20 clients measured
    assert "**MET**" in out or "**MISSED**" in out
    assert (tmp_path / "bench-quick.md").read_text().strip()
    assert (tmp_path / "bench-quick-latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
