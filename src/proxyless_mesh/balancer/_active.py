"""Which endpoints serve right now, and with what share of the traffic.

Envoy's priority and locality rules, computed once per change of health,
ejection or slow-start state (never per request):

- Health: HEALTHY and UNKNOWN serve; DEGRADED serves only the load the
  healthy endpoints cannot take; UNHEALTHY, TIMEOUT and outlier-ejected
  endpoints count as unavailable; DRAINING endpoints are left out entirely,
  not even counted (current Envoy excludes EDS-draining hosts the same way),
  so a draining endpoint never gets a new request, not even in panic.
- Priority load: the availability of a priority is
  min(100%, overprovisioning_factor/100 * healthy/total) (same for
  degraded). Priorities take load in order, each its availability
  normalised by the total availability (capped at 100%), healthy load first,
  then degraded. With the default factor 1.4, a priority at 50% health
  keeps 70% of the traffic and 30% spills to the next.
- Panic: when the normalised total availability is below 100% and a
  priority's (healthy+degraded) share is below `panic_threshold` percent,
  that priority's load goes to all of its endpoints, healthy or not.
  If nothing is available anywhere, the first priority panics (if the
  threshold is above 0). A threshold of 0 turns panic off.
- Localities: within a priority, a locality's weight is its
  LocalityEndpoints.weight times its own availability (min(1, factor *
  healthy/total)), as Envoy's locality-weighted LB does (gRPC's
  weighted_target does not scale by health, so the control plane sends gRPC
  clients healthy-only weights and us the configured ones); a locality of
  weight 0 gets nothing. Within a locality, endpoints share by weight (times
  the slow-start factor).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from proxyless_mesh.balancer._outlier import HostState
from proxyless_mesh.model import Endpoint, HealthStatus, SlowStartConfig

_SERVING = frozenset({HealthStatus.HEALTHY, HealthStatus.UNKNOWN})
# During slow start the weights are recomputed this many times per window.
SLOW_START_STEPS = 20


@dataclass(frozen=True, slots=True)
class HostEntry:
    """One endpoint of the assignment, where it sits, and its shared state."""

    endpoint: Endpoint
    priority: int
    locality: int  # index into the assignment's localities
    locality_weight: int
    state: HostState


@dataclass(frozen=True, slots=True)
class Group:
    """Endpoints that share `load` (a fraction of all traffic) by `weights`
    (relative, all > 0). One per priority and health class (or one per
    panicking priority)."""

    load: float
    endpoints: tuple[Endpoint, ...]
    weights: tuple[float, ...]
    states: tuple[HostState, ...]


@dataclass(frozen=True, slots=True)
class ActiveSet:
    groups: tuple[Group, ...]
    reason: str  # why `groups` is empty; "" otherwise
    refresh_at: float  # when time alone changes the set (readmission, slow start)


def slow_start_factor(
    state: HostState, config: SlowStartConfig | None, now: float
) -> tuple[float, float]:
    """The weight multiplier for an endpoint and when it should be recomputed
    (inf once the ramp is over)."""
    if config is None or config.window <= 0:
        return 1.0, math.inf
    elapsed = now - state.first_seen
    if elapsed >= config.window:
        return 1.0, math.inf
    ramp = (max(elapsed, 0.0) / config.window) ** (1.0 / max(config.aggression, 1e-9))
    factor = max(config.min_weight_percent / 100.0, ramp)
    step = config.window / SLOW_START_STEPS
    return factor, min(now + step, state.first_seen + config.window)


def compute_active(
    hosts: tuple[HostEntry, ...],
    overprovisioning_factor: int,
    panic_threshold: float,
    slow_start: SlowStartConfig | None,
    now: float,
) -> ActiveSet:
    refresh_at = math.inf
    priorities: dict[int, list[HostEntry]] = {}
    ejected = 0
    for host in hosts:
        if host.endpoint.health is HealthStatus.DRAINING:
            continue
        until = host.state.ejected_until
        if until is not None:
            ejected += 1
            refresh_at = min(refresh_at, until)
        priorities.setdefault(host.priority, []).append(host)
    factor = overprovisioning_factor / 100.0
    levels = [priorities[p] for p in sorted(priorities)]
    healthy = [[h for h in lv if _is_healthy(h)] for lv in levels]
    degraded = [[h for h in lv if _is_degraded(h)] for lv in levels]
    h_avail = [min(1.0, factor * len(hs) / len(lv)) for hs, lv in zip(healthy, levels, strict=True)]
    d_avail = [
        min(1.0, factor * len(ds) / len(lv)) for ds, lv in zip(degraded, levels, strict=True)
    ]
    total = min(1.0, sum(min(1.0, a + b) for a, b in zip(h_avail, d_avail, strict=True)))
    groups: list[Group] = []

    def add(members: list[HostEntry], load: float, availability_of: Callable[[int], float]) -> None:
        nonlocal refresh_at
        if load <= 0 or not members:
            return
        endpoints, weights, states, next_refresh = _weigh(members, availability_of, slow_start, now)
        refresh_at = min(refresh_at, next_refresh)
        if endpoints:
            groups.append(Group(load, endpoints, weights, states))

    if total <= 0:
        if panic_threshold > 0 and levels:
            add(levels[0], 1.0, _flat)
    else:
        remaining = 1.0
        h_load = []
        for a in h_avail:
            share = min(remaining, a / total)
            h_load.append(share)
            remaining -= share
        d_load = []
        for a in d_avail:
            share = min(remaining, a / total)
            d_load.append(share)
            remaining -= share
        for i, level in enumerate(levels):
            available = len(healthy[i]) + len(degraded[i])
            if total < 1.0 and 100.0 * available / len(level) < panic_threshold:
                add(level, h_load[i] + d_load[i], _flat)
            else:
                add(healthy[i], h_load[i], _Availability(level, factor, _is_healthy))
                add(degraded[i], d_load[i], _Availability(level, factor, _is_degraded))
    reason = "" if groups else _reason(hosts, ejected)
    return ActiveSet(tuple(groups), reason, refresh_at)


def _is_healthy(host: HostEntry) -> bool:
    return host.endpoint.health in _SERVING and host.state.ejected_until is None


def _is_degraded(host: HostEntry) -> bool:
    return host.endpoint.health is HealthStatus.DEGRADED and host.state.ejected_until is None


class _Availability:
    """A locality's availability within a priority: min(1, factor * share of
    its endpoints in the serving class)."""

    __slots__ = ("_ratio",)

    def __init__(
        self, level: list[HostEntry], factor: float, serving: Callable[[HostEntry], bool]
    ) -> None:
        totals: dict[int, int] = {}
        good: dict[int, int] = {}
        for h in level:
            totals[h.locality] = totals.get(h.locality, 0) + 1
            if serving(h):
                good[h.locality] = good.get(h.locality, 0) + 1
        self._ratio = {loc: min(1.0, factor * good.get(loc, 0) / n) for loc, n in totals.items()}

    def __call__(self, locality: int) -> float:
        return self._ratio.get(locality, 0.0)


def _flat(locality: int) -> float:
    return 1.0


def _weigh(
    members: list[HostEntry],
    availability_of: Callable[[int], float],
    slow_start: SlowStartConfig | None,
    now: float,
) -> tuple[tuple[Endpoint, ...], tuple[float, ...], tuple[HostState, ...], float]:
    refresh_at = math.inf
    raw: list[float] = []
    locality_sum: dict[int, float] = {}
    locality_weight: dict[int, float] = {}
    for h in members:
        ramp, when = slow_start_factor(h.state, slow_start, now)
        refresh_at = min(refresh_at, when)
        w = max(1, h.endpoint.weight) * ramp
        raw.append(w)
        locality_sum[h.locality] = locality_sum.get(h.locality, 0.0) + w
        locality_weight[h.locality] = max(0, h.locality_weight) * availability_of(h.locality)
    weight_sum = sum(locality_weight.values())
    if weight_sum <= 0:
        # No locality carries weight (all zero): fall back to endpoint weights alone.
        locality_weight = dict(locality_sum)
        weight_sum = sum(locality_weight.values())
    endpoints: list[Endpoint] = []
    weights: list[float] = []
    states: list[HostState] = []
    for h, w in zip(members, raw, strict=True):
        share = locality_weight[h.locality] / weight_sum * w / locality_sum[h.locality]
        if share > 0:
            endpoints.append(h.endpoint)
            weights.append(share)
            states.append(h.state)
    return tuple(endpoints), tuple(weights), tuple(states), refresh_at


def _reason(hosts: tuple[HostEntry, ...], ejected: int) -> str:
    n = len(hosts)
    if n == 0:
        return "no endpoints are registered"
    if ejected == n:
        return f"all {n} endpoints are ejected by outlier detection"
    if ejected:
        return (
            f"all {n} endpoints are unhealthy, draining or ejected by outlier detection "
            f"({ejected} ejected)"
        )
    return f"all {n} endpoints are unhealthy or draining"
