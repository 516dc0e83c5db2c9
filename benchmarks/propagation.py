"""File-to-client propagation: write a VirtualService, time until our library's
routing snapshot holds the new weights (control plane inotify + debounce +
translate + push + client decode + snapshot build), in the harness process."""

from __future__ import annotations

import time

from common import md_table, new_histogram, percentile_ms
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from meshlab import LocalMesh

from proxyless_mesh import Mesh


def run(lab: LocalMesh, host: str, port: int, changes: int) -> str:
    authority = f"{host}:{port}"
    hist: HdrHistogram = new_histogram()
    with Mesh.from_bootstrap(lab.bootstrap("bench-propagation"), preload=[authority]) as mesh:
        for i in range(changes):
            v2 = 10 + (i % 2) * 80  # alternate 90/10 and 10/90
            lab.set_weights(host, {"v1": 100 - v2, "v2": v2})
            start = time.perf_counter()
            want = (f"outbound|{port}|v2|{host}", v2)
            while True:
                table = mesh.snapshot.routes.get(authority)
                if table is not None and want in table.routes[0].clusters:
                    break
                if time.perf_counter() - start > 10:
                    raise SystemExit("a change did not reach the client within 10 s")
                time.sleep(0.0005)
            hist.record_value(max(1, int((time.perf_counter() - start) * 1e6)))
            time.sleep(0.2)  # let the watcher's debounce window close before the next write
    return md_table(
        ["changes", "p50 (ms)", "p99 (ms)", "max (ms)", "min (ms)"],
        [
            [
                str(changes),
                f"{percentile_ms(hist, 50):.0f}",
                f"{percentile_ms(hist, 99):.0f}",
                f"{hist.get_max_value() / 1e3:.0f}",
                f"{hist.get_min_value() / 1e3:.0f}",
            ]
        ],
    )
