"""Small shared pieces of the harness: /proc readers, histograms, tables, verdicts.

Importing this module also makes `examples/` importable (meshlab), as the
harness's scripts are run from anywhere as plain files.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / _TICKS


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a control plane's ADS workers), from
    /proc/<pid>/task/*/children; processes gone meanwhile are skipped."""
    found = [pid]
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for child in children:
            found += process_tree(child)
    return found


def _tree_sum(pid: int, measure: Callable[[int], float]) -> float:
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):  # gone meanwhile
            total += measure(p)
    return total


def tree_cpu_seconds(pid: int) -> float:
    """cpu_seconds of `pid` and its live descendants together."""
    return _tree_sum(pid, cpu_seconds)


def tree_rss_kb(pid: int) -> int:
    """rss_kb of `pid` and its live descendants together."""
    return int(_tree_sum(pid, rss_kb))


def rss_kb(pid: int) -> int:
    """Resident set size (VmRSS) in KB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def new_histogram() -> HdrHistogram:
    """Microseconds, 1 us to 60 s, 3 significant digits."""
    return HdrHistogram(1, 60_000_000, 3)


def percentile_ms(hist: HdrHistogram, q: float) -> float:
    return float(hist.get_value_at_percentile(q)) / 1e3


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table; every column but the first right-aligned."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Verdict:
    """One target of the issue, written as a ratio, and whether it was met.
    `met` is None when the target could not be measured in this run."""

    target: str
    measured: str
    met: bool | None

    @property
    def word(self) -> str:
        return "NOT MEASURED" if self.met is None else ("MET" if self.met else "MISSED")


def verdict_table(verdicts: Sequence[Verdict]) -> str:
    return md_table(
        ["target", "measured (ratio)", "verdict"],
        [[v.target, v.measured, f"**{v.word}**"] for v in verdicts],
    )
