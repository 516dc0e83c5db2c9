"""The mesh's own per-request decision in isolation (issue 25): no httpx, no I/O.

    python benchmarks/bench_decision.py [--quick]
    make bench BENCH_ARGS="--only decision"

One request's decision as the httpx transport makes it, minus the transport:
route (`route_request`: the authority's table, a header match that misses,
then the catch-all route), a 90/10 weighted split, admission to the cluster's
circuit breakers, the resilience engine's one try (`request_flow` run by
`drive`), the balancer's pick (LEAST_REQUEST over 3 endpoints), the
in-flight counters (`on_start`/`on_finish`), the outcome and the release of
the admission. The try itself answers 200 at once. Printed: CPU µs per
request of the requesting thread (`time.thread_time`), min and lower
quartile over the rounds (a busy machine inflates the rest), for the route
step alone and for the whole decision, rounds alternating.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable

from proxyless_mesh.balancer import ClusterBalancer, Outcome
from proxyless_mesh.model import (
    Cluster,
    ClusterLoadAssignment,
    Endpoint,
    HeaderMatcher,
    LbPolicy,
    Locality,
    LocalityEndpoints,
    MatchKind,
    PathMatcher,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
    StringMatcher,
    VirtualHost,
    WeightedCluster,
)
from proxyless_mesh.resilience import AttemptResult, ClusterResources, Send, drive, request_flow
from proxyless_mesh.routing import compile_virtual_host
from proxyless_mesh.runtime import ALLOW_ANY, MeshSnapshot, route_request

AUTHORITY = "reviews.default.mesh:8080"
# Istio's default retry policy on every route without one of its own.
ISTIO_RETRIES = RetryPolicy(
    retry_on=frozenset(
        {"connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"}
    ),
    num_retries=2,
    retriable_status_codes=(503,),
)


def snapshot() -> MeshSnapshot:
    """reviews: `x-user: jason` -> v2, everything else 90/10 v1/v3."""
    cluster_names = ("outbound|8080|v1|reviews", "outbound|8080|v2|reviews")
    cluster_names += ("outbound|8080|v3|reviews",)
    jason = Route(
        name="jason",
        match=RouteMatch(
            PathMatcher(MatchKind.PREFIX, "/"),
            headers=(HeaderMatcher("end-user", StringMatcher(MatchKind.EXACT, "jason")),),
        ),
        action=RouteAction(
            clusters=(WeightedCluster(cluster_names[1], 100),), retry_policy=ISTIO_RETRIES
        ),
    )
    split = Route(
        name="split",
        match=RouteMatch(PathMatcher(MatchKind.PREFIX, "/")),
        action=RouteAction(
            clusters=(
                WeightedCluster(cluster_names[0], 90),
                WeightedCluster(cluster_names[2], 10),
            ),
            retry_policy=ISTIO_RETRIES,
        ),
    )
    table = compile_virtual_host(VirtualHost("reviews", (AUTHORITY,), (jason, split)))
    balancers = {}
    for index, name in enumerate(cluster_names):
        cluster = Cluster(name, name, lb_policy=LbPolicy.LEAST_REQUEST)
        endpoints = tuple(Endpoint(f"10.0.{index}.{i}", 9080) for i in range(1, 4))
        assignment = ClusterLoadAssignment(name, (LocalityEndpoints(Locality(), endpoints),))
        balancers[name] = ClusterBalancer(cluster, assignment, rng=random.Random(1))
    return MeshSnapshot(routes={AUTHORITY: table}, balancers=balancers)


def decide(snap: MeshSnapshot, resources: dict[str, ClusterResources]) -> Callable[[], object]:
    """One request's decision, as `Exchange` makes it."""
    headers = {"content-type": "application/json"}.get
    rng = random.Random(2)
    clock = time.monotonic

    def one() -> object:
        decision = route_request(
            snap, AUTHORITY, "/reviews/0", "GET", headers, outbound_policy=ALLOW_ANY
        )
        cluster = decision.cluster  # type: ignore[union-attr]
        balancer = snap.balancers[cluster]
        action = decision.route.action  # type: ignore[union-attr]

        def attempt(send: Send) -> AttemptResult:
            balancer.on_start(send.endpoint)
            balancer.on_finish(send.endpoint, Outcome.SUCCESS)
            return AttemptResult(status=200)

        flow = request_flow(
            route_name=decision.route_name,  # type: ignore[union-attr]
            cluster=cluster,
            policy=action.retry_policy,
            route_timeout=None,
            pick=lambda exclude: balancer.pick(None, exclude),
            resources=resources[cluster],
            clock=clock,
            rng=rng,
            replayable=True,
        )
        return drive(flow, attempt, lambda: None)

    return one


def route_only(snap: MeshSnapshot) -> Callable[[], object]:
    headers = {"content-type": "application/json"}.get

    def one() -> object:
        return route_request(
            snap, AUTHORITY, "/reviews/0", "GET", headers, outbound_policy=ALLOW_ANY
        )

    return one


def cpu_us(fn: Callable[[], object], requests: int) -> float:
    started = time.thread_time()
    for _ in range(requests):
        fn()
    return (time.thread_time() - started) / requests * 1e6


def rows() -> dict[str, Callable[[], object]]:
    snap = snapshot()
    resources = {name: ClusterResources(name) for name in snap.balancers}
    return {"route + split": route_only(snap), "whole decision": decide(snap, resources)}


def run(quick: bool = False) -> str:
    """The markdown section body (the `make bench` runner calls this)."""
    requests, rounds = (2_000, 3) if quick else (20_000, 9)
    steps = rows()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for fn in steps.values():
        cpu_us(fn, 500)  # warm
    for _ in range(rounds):
        for name, fn in steps.items():
            samples[name].append(cpu_us(fn, requests))
    lines = [
        f"CPU µs per request, {rounds} alternating rounds of {requests:,} (target: the "
        "whole decision under 3 µs):\n",
        "| step | min | lower quartile | median |",
        "|---|---:|---:|---:|",
    ]
    for name, values in samples.items():
        q1 = statistics.quantiles(values, n=4)[0] if len(values) > 1 else values[0]
        lines.append(f"| {name} | {min(values):.2f} | {q1:.2f} | {statistics.median(values):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv[1:]))
