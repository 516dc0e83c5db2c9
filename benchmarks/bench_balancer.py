"""Balancer cost: ns per pick for each policy, and rebuild time at 10,000 endpoints.

    python benchmarks/bench_balancer.py [--quick]

`run()` returns a markdown table (used by benchmarks/run.py as well). Each
figure is the median (p50) of several repetitions of a timed loop of picks,
so one slow repetition on a shared machine does not skew it. Picks for the
hash policies carry a precomputed 64-bit key (computing the key from a
header is the integration's cost, measured separately by `hash key`).
Rebuild time is the construction of a ClusterBalancer (active set + picker:
schedule, ring or Maglev table) for 10,000 endpoints.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from proxyless_mesh.balancer import ClusterBalancer, Outcome, hash_key
from proxyless_mesh.model import (
    Cluster,
    ClusterLoadAssignment,
    Endpoint,
    HashPolicy,
    HashPolicyKind,
    LbPolicy,
    Locality,
    LocalityEndpoints,
    MaglevConfig,
    OutlierDetection,
    RingHashConfig,
)

SIZES = (10, 100, 1_000, 10_000)
POLICIES = (
    LbPolicy.ROUND_ROBIN,
    LbPolicy.LEAST_REQUEST,
    LbPolicy.RANDOM,
    LbPolicy.RING_HASH,
    LbPolicy.MAGLEV,
)
BUDGET_NS = {
    LbPolicy.ROUND_ROBIN: 2_000,
    LbPolicy.LEAST_REQUEST: 2_000,
    LbPolicy.RANDOM: 2_000,
    LbPolicy.RING_HASH: 5_000,
    LbPolicy.MAGLEV: 5_000,
}


def make_balancer(
    policy: LbPolicy, n: int, seed: int = 1, outlier: OutlierDetection | None = None
) -> ClusterBalancer:
    # Weights 1..3 so the weighted code paths (not the uniform shortcuts) are measured.
    endpoints = tuple(
        Endpoint(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 8080, weight=1 + i % 3)
        for i in range(n)
    )
    cluster = Cluster(
        "bench",
        "bench",
        lb_policy=policy,
        ring_hash=RingHashConfig() if policy is LbPolicy.RING_HASH else None,
        maglev=MaglevConfig() if policy is LbPolicy.MAGLEV else None,
        outlier_detection=outlier,
    )
    assignment = ClusterLoadAssignment("bench", (LocalityEndpoints(Locality(), endpoints),))
    return ClusterBalancer(cluster, assignment, rng=random.Random(seed))


def pick_ns(balancer: ClusterBalancer, picks: int, repetitions: int) -> float:
    rng = random.Random(7)
    keys = [rng.getrandbits(64) for _ in range(1024)]
    pick = balancer.pick
    results = []
    for _ in range(repetitions):
        start = time.perf_counter_ns()
        for i in range(picks):
            pick(keys[i & 1023])
        results.append((time.perf_counter_ns() - start) / picks)
    return statistics.median(results)


def rebuild_ms(policy: LbPolicy, n: int, repetitions: int) -> float:
    results = []
    for seed in range(repetitions):
        start = time.perf_counter()
        make_balancer(policy, n, seed)
        results.append((time.perf_counter() - start) * 1000)
    return statistics.median(results)


def hash_key_ns(repetitions: int, calls: int) -> float:
    policies = (HashPolicy(HashPolicyKind.HEADER, "x-user"),)
    headers = {"x-user": "user-1234"}
    results = []
    for _ in range(repetitions):
        start = time.perf_counter_ns()
        for _ in range(calls):
            hash_key(
                policies,
                header=headers.get,
                cookie=headers.get,
                query=headers.get,
                source_ip=None,
            )
        results.append((time.perf_counter_ns() - start) / calls)
    return statistics.median(results)


def run(quick: bool = False) -> str:
    picks = 20_000 if quick else 200_000
    repetitions = 3 if quick else 7
    header = (
        "| policy | budget | " + " | ".join(f"{n:,} eps" for n in SIZES) + " | rebuild @10,000 |"
    )
    lines = [
        "### Balancer pick cost (ns/op, p50 of "
        f"{repetitions} runs of {picks:,} picks; weights 1..3, one locality)",
        "",
        "Budget at 10,000 endpoints: < 2 us round robin, least request, random; "
        "< 5 us ring hash, maglev.",
        "",
        header,
        "|---|---|" + "---:|" * (len(SIZES) + 1),
    ]
    for policy in POLICIES:
        cells = []
        for n in SIZES:
            ns = pick_ns(make_balancer(policy, n), picks, repetitions)
            cells.append(f"{ns:,.0f}")
        rebuild = rebuild_ms(policy, 10_000, 1 if quick else 3)
        budget = f"< {BUDGET_NS[policy] // 1000} us"
        lines.append(
            f"| {policy.value.lower()} | {budget} | "
            + " | ".join(cells)
            + f" | {rebuild:,.0f} ms |"
        )
    watched = make_balancer(LbPolicy.ROUND_ROBIN, 10_000, outlier=OutlierDetection())
    plain_od = pick_ns(watched, picks, repetitions)
    victim = watched.pick()
    if victim is not None:
        for _ in range(5):  # eject one endpoint: picks now also read the clock
            watched.on_start(victim)
            watched.on_finish(victim, Outcome.HTTP_5XX)
    ejected_od = pick_ns(watched, picks, repetitions)
    lines.append("")
    lines.append(
        f"round_robin at 10,000 with outlier detection on: {plain_od:,.0f} ns/op; "
        f"with one endpoint ejected: {ejected_od:,.0f} ns/op"
    )
    lines.append(
        f"hash key from one header policy: {hash_key_ns(repetitions, picks // 4):,.0f} ns/op"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer picks and repetitions")
    print(run(quick=parser.parse_args().quick))


if __name__ == "__main__":
    main()
