"""Inbound authorization cost per request for 1, 10 and 100 AuthorizationPolicies.

    python benchmarks/bench_policy.py [--quick]

In-process: the policies are compiled once into a `PolicySet` (as the
integrations do per config update) and `PolicySet.check` is timed, which is
the whole per-request cost the ASGI/WSGI/gRPC server integrations add
(path normalization, host normalization, RBAC). Each of the N ALLOW
policies names one caller (`from.principals`) and one path prefix with a
method (`to.operation`), as service-to-service policies usually do. Three
requests: the one matched by the first policy, the one matched by the last
(every policy is tried before it), and one no policy matches (denied after
trying all). Figures: microseconds per check, the median of repetitions.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from mesh_control_plane.config.authorization import authorization_policies_to_rbac

from proxyless_mesh.policy import InboundRequest, PolicySet

SIZES = (1, 10, 100)


def _policy(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": f"allow-{i}", "namespace": "default"},
        "spec": {
            "action": "ALLOW",
            "rules": [
                {
                    "from": [
                        {"source": {"principals": [f"cluster.local/ns/default/sa/client-{i}"]}}
                    ],
                    "to": [{"operation": {"methods": ["GET"], "paths": [f"/api/{i}/*"]}}],
                }
            ],
        },
    }


def _request(i: int) -> InboundRequest:
    return InboundRequest(
        method="GET",
        target=f"/api/{i}/items?page=2".encode(),
        headers={"host": "bench.default.svc:8080", "user-agent": "bench"},
        peer_principal=f"spiffe://cluster.local/ns/default/sa/client-{i}",
        source_ip="127.0.0.1",
        destination_port=8080,
    )


def _per_check_us(check: Callable[[], object], n: int, repetitions: int) -> float:
    rounds = []
    for _ in range(repetitions):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            check()
        rounds.append((time.perf_counter_ns() - t0) / n / 1000)
    return statistics.median(rounds)


def measure(quick: bool = False) -> dict[int, dict[str, float]]:
    """policies -> case -> us per check. Refuses to time a wrong decision."""
    n, repetitions = (300, 3) if quick else (5000, 7)
    found: dict[int, dict[str, float]] = {}
    for size in SIZES:
        policies = PolicySet(authorization_policies_to_rbac([_policy(i) for i in range(size)]))
        cases = {
            "first policy matches": (_request(0), True),
            "last policy matches": (_request(size - 1), True),
            "no policy matches (403)": (_request(size), False),
        }
        found[size] = {}
        for case, (request, allowed) in cases.items():
            if policies.check(request).allowed is not allowed:
                raise RuntimeError(f"{size} policies, {case}: unexpected decision")
            found[size][case] = _per_check_us(partial(policies.check, request), n, repetitions)
    return found


def table(found: dict[int, dict[str, float]]) -> str:
    cases = list(next(iter(found.values())))
    lines = [
        "| policies | " + " | ".join(f"{c} (us)" for c in cases) + " |",
        "|---:|" + "---:|" * len(cases),
    ]
    for size, row in found.items():
        lines.append(f"| {size} | " + " | ".join(f"{row[c]:.2f}" for c in cases) + " |")
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    """The markdown section body (the `make bench` runner calls this)."""
    return (
        "`PolicySet.check` per request, in-process (microseconds, median of repetitions): "
        "N ALLOW AuthorizationPolicies, each one principal and one path prefix + method.\n\n"
        + table(measure(quick))
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv[1:]))
