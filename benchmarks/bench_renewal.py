"""Workload certificate cost (issue 5's figures): the first certificate (a new
P-256 key, a CSR, a token-authenticated CreateCertificate call) and a renewal
(a new key, a CSR signed for by the current certificate), against the real
control plane CA of the lab, measured in this process."""

from __future__ import annotations

import asyncio
import statistics
import time

from meshlab import LocalMesh

from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.security import IdentityConfig, IdentityManager


async def _measure(config: IdentityConfig, renewals: int) -> tuple[list[float], list[float]]:
    firsts: list[float] = []
    renews: list[float] = []
    for _ in range(3):
        manager = IdentityManager(config)
        start = time.perf_counter()
        await manager.start()
        firsts.append(time.perf_counter() - start)
        try:
            for _ in range(renewals):
                start = time.perf_counter()
                await manager.renew()
                renews.append(time.perf_counter() - start)
        finally:
            await manager.close()
    return firsts, renews


def run(lab: LocalMesh, quick: bool = False) -> str:
    token = lab.token("default", "bench-renewal")
    bootstrap = Bootstrap.from_file(lab.bootstrap("bench-renewal", sa="bench-renewal", token=token))
    config = IdentityConfig.from_bootstrap(bootstrap)
    firsts, renews = asyncio.run(_measure(config, 3 if quick else 20))
    renews.sort()
    lines = [
        "| step | n | p50 (ms) | max (ms) |",
        "|---|---:|---:|---:|",
        f"| first certificate (key, CSR, token) | {len(firsts)} | "
        f"{statistics.median(firsts) * 1e3:.1f} | {max(firsts) * 1e3:.1f} |",
        f"| renewal (key, CSR, current certificate) | {len(renews)} | "
        f"{statistics.median(renews) * 1e3:.1f} | {renews[-1] * 1e3:.1f} |",
    ]
    return "\n".join(lines) + "\n"
