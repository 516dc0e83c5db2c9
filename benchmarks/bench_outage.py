"""Upstream attempts per request during a total outage: retry budget vs none.

Every endpoint answers 503; the route retries 5xx 3 times (`retries:
{attempts: 3, retryOn: 5xx}`: up to 4 attempts per request). 40 client
threads share one mesh transport (one process-wide set of circuit-breaker
counters, as a real service has) and each sends its requests one after
another. `outage-budget` keeps the retry budget every cluster gets by default
(20 % of active requests, at least 3 concurrent retries);
`outage-nobudget` sets `connectionPool.http.maxRetries` (1,000,000), which
replaces the budget. Attempts are counted by the server (GET /count), so
they are what the upstream really received. Rounds alternate the variants.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx
from common import md_table
from lab import HTTP_PORT, OUTAGE_BUDGET_HOST, OUTAGE_NO_BUDGET_HOST
from rows import Setup, own_bootstrap

from proxyless_mesh import Mesh

CONCURRENCY = 40
VARIANTS = {
    "default retry budget": OUTAGE_BUDGET_HOST,
    "no budget (maxRetries set)": OUTAGE_NO_BUDGET_HOST,
}


@dataclass
class Tally:
    requests: int = 0
    attempts: int = 0
    failed: int = 0  # answers other than the upstream's 503 (errors raised included)
    elapsed: float = 0.0


def _count(setup: Setup) -> int:
    return int(httpx.get(f"http://127.0.0.1:{setup.outage_port}/count", timeout=10).text)


def _burst(client: httpx.Client, url: str, per_thread: int) -> tuple[int, int]:
    """All threads at once; returns (requests, answers that were not 503)."""
    failed = [0]
    lock = threading.Lock()
    start = threading.Barrier(CONCURRENCY)

    def worker() -> None:
        start.wait()
        for _ in range(per_thread):
            try:
                status = client.post(url, content=b"x" * 1024).status_code
            except httpx.HTTPError:
                status = 0
            if status != 503:
                with lock:
                    failed[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return CONCURRENCY * per_thread, failed[0]


def measure(setup: Setup, quick: bool) -> dict[str, Tally]:
    per_thread, rounds = (2, 1) if quick else (10, 3)
    authorities = [f"{host}:{HTTP_PORT}" for host in VARIANTS.values()]
    tallies = {name: Tally() for name in VARIANTS}
    with (
        Mesh.from_bootstrap(
            own_bootstrap(setup, "bench-outage", mtls=False), preload=authorities
        ) as mesh,
        httpx.Client(transport=mesh.httpx_transport(), timeout=30) as client,
    ):
        names = list(VARIANTS)
        for r in range(rounds):
            for name in names[r % 2 :] + names[: r % 2]:
                url = f"http://{VARIANTS[name]}:{HTTP_PORT}/item"
                seen, t0 = _count(setup), time.perf_counter()
                requests, failed = _burst(client, url, per_thread)
                tally = tallies[name]
                tally.elapsed += time.perf_counter() - t0
                tally.attempts += _count(setup) - seen
                tally.requests += requests
                tally.failed += failed
    return tallies


def run(setup: Setup, quick: bool = False) -> str:
    tallies = measure(setup, quick)
    rows = [
        [
            name,
            f"{t.requests:,}",
            f"{t.attempts:,}",
            f"{t.attempts / t.requests:.2f}" if t.requests else "-",
            f"{t.requests / t.elapsed:,.0f}" if t.elapsed else "-",
            str(t.failed),
        ]
        for name, t in tallies.items()
    ]
    headers = ["cluster", "requests", "upstream attempts", "attempts per request"]
    headers += ["req/s", "answers other than 503"]
    return (
        f"All endpoints answer 503; retries: {{attempts: 3, retryOn: 5xx}} (at most 4 "
        f"attempts); {CONCURRENCY} concurrent client threads on one mesh transport.\n\n"
        + md_table(headers, rows)
    )
