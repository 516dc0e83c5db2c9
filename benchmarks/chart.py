"""The latency chart: HDR-style percentile curves, one panel per section and
scenario, one line per row, so tails are visible and not only three points."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: the harness runs headless

import matplotlib.pyplot as plt
from data_path import Results

PERCENTILES = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9]


def write_chart(path: Path, sections: dict[str, Results]) -> None:
    panels = [(s, name, tallies) for s, res in sections.items() for name, tallies in res.items()]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    ticks = [1 / (1 - p / 100) for p in PERCENTILES]
    for ax, (section, scenario, tallies) in zip(axes[0], panels, strict=True):
        for row, tally in tallies.items():
            ax.plot(ticks, [tally.p(p) for p in PERCENTILES], marker="o", label=row)
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"p{p:g}" for p in PERCENTILES], fontsize=7)
        ax.minorticks_off()
        ax.set_title(f"{section.upper()}: {scenario}", fontsize=9)
        ax.set_ylabel("latency (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
