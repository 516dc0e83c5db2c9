"""The integer state of one cluster's circuit breakers is native (issue 25).

`ClusterResources` keeps its queue of waiting tickets and asks the Rust
core's `proxyless_mesh_native.ClusterCounters` for every decision on numbers:
each call is one crossing under the counters' own mutex, so the common
admission and release take no Python lock, and a metrics scrape reads them.
`native_counters` is the seam where tests/property/test_native_limits_props.py
substitutes its Python reference (tests/oracles/limits.py).
"""

from __future__ import annotations

from typing import Any

from proxyless_mesh import native_core
from proxyless_mesh.model import CircuitBreakers

# (max_requests, max_pending_requests, max_retries, (budget_percent, min_retry_concurrency) or None)
LimitsSpec = tuple[int, int, int, tuple[float, int] | None]


def limits_spec(limits: CircuitBreakers) -> LimitsSpec:
    budget = limits.retry_budget
    return (
        limits.max_requests,
        limits.max_pending_requests,
        limits.max_retries,
        None if budget is None else (budget.budget_percent, budget.min_retry_concurrency),
    )


#: `ClusterCounters(spec)`: the native counters' class.
native_counters: Any = native_core.member("ClusterCounters")
