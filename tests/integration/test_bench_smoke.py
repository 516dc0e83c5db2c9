"""The benchmark harness runs (a short version), so `make bench` cannot rot.
It checks the harness, not the figures: performance is never asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick_run_prints_its_tables() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| plain httpx |" in result.stdout
    assert "| mesh transport |" in result.stdout
    assert "## Propagation" in result.stdout
