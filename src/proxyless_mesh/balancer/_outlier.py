"""Per-endpoint state that outlives one config snapshot, and outlier detection.

Envoy's consecutive-error detectors, with the clock injected:

- consecutive_5xx counts HTTP_5XX and GATEWAY_ERROR, plus LOCAL_ORIGIN_FAILURE
  unless `split_external_local_origin_errors` (Envoy maps a connect failure
  or timeout to a 503/504 in that case);
- consecutive_gateway_failure counts GATEWAY_ERROR (plus local-origin
  failures when not split); a non-gateway 5xx resets it, as in Envoy;
- consecutive_local_origin_failure counts LOCAL_ORIGIN_FAILURE, only when
  split (Envoy ignores it otherwise);
- a SUCCESS resets every counter.

Ejection lasts base_ejection_time * times_ejected, capped at
max(max_ejection_time, base_ejection_time). The multiplier decays by one
for every `interval` the endpoint spends readmitted (Envoy decrements it on
each interval tick while the host is healthy), applied lazily at the next
ejection. Readmission happens as soon as the ejection time has passed,
checked lazily by the balancer against the clock; Envoy only unejects on
its interval timer, so it can be up to one interval later there.

max_ejection_percent follows current Envoy: an ejection happens only if
(ejected + 1) / hosts * 100 <= max_ejection_percent, so the percentage is
never exceeded (with the default 10% nobody is ejected from fewer than 10
hosts). Envoy before 1.27 and gRPC (A50) compare the current share instead
(`ejected / hosts < max`), which always allows one ejection; current Envoy
offers that as `always_eject_one_host`, which the model does not carry.

Why not pybreaker (one breaker per endpoint looks natural): pybreaker reads
wall time (`datetime.now(UTC)`) with no clock to inject, so tests would have
to sleep; its reset timeout is fixed, while Envoy's ejection time grows with
each ejection; its half-open state lets one trial call through, while an
ejected Envoy host comes back fully after its time; and the cluster-wide
max_ejection_percent veto does not fit a per-breaker state machine. The
state machine here is two states (serving, ejected until T) and a counter.
"""

from __future__ import annotations

import itertools
import math
import threading

from proxyless_mesh.balancer._outcome import Outcome
from proxyless_mesh.model import OutlierDetection


class HostState:
    """Mutable per-endpoint counters, keyed by (address, port) and carried
    from one balancer to its successor so config pushes lose nothing.

    `flight` holds one item per request in flight: `list.append` and
    `list.pop` are atomic, so counting a request takes no lock (a locked
    `+= 1` and `-= 1` cost ~0.5 µs a request)."""

    __slots__ = (
        "consecutive_5xx",
        "consecutive_gateway",
        "consecutive_local",
        "ejected_until",
        "first_seen",
        "flight",
        "readmitted_at",
        "times_ejected",
    )

    def __init__(self, first_seen: float) -> None:
        self.flight: list[None] = []
        self.first_seen = first_seen
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.consecutive_local = 0
        self.ejected_until: float | None = None
        self.times_ejected = 0
        self.readmitted_at = -math.inf

    @property
    def in_flight(self) -> int:
        return len(self.flight)


class ClusterState:
    """What a cluster's successive balancers share: host states, the
    round-robin position, and a version bumped on every ejection or
    readmission so each balancer knows to rebuild its active set.

    In-flight requests may finish on the balancer of an older snapshot; since
    the host states and this object are shared, their outcomes still count."""

    __slots__ = ("counter", "hosts", "lock", "seen_assignment", "version")

    def __init__(self) -> None:
        self.hosts: dict[tuple[str, int], HostState] = {}
        self.version = 0
        self.seen_assignment = False
        self.counter: itertools.count[int] = itertools.count()
        # Guards counters and ejection decisions (on_start/on_finish), never pick().
        self.lock = threading.Lock()

    def readmit_due(self, now: float) -> bool:
        """Readmit every host whose ejection time has passed; True if any."""
        changed = False
        for state in self.hosts.values():
            until = state.ejected_until
            if until is not None and until <= now:
                state.ejected_until = None
                state.readmitted_at = now
                changed = True
        if changed:
            self.version += 1
        return changed

    def record(self, state: HostState, outcome: Outcome, od: OutlierDetection, now: float) -> None:
        """Count `outcome` for `state` and eject it if a detector trips.
        Called with `lock` held."""
        if outcome is Outcome.SUCCESS:
            state.consecutive_5xx = state.consecutive_gateway = state.consecutive_local = 0
            return
        tripped = False
        split = od.split_external_local_origin_errors
        if outcome is Outcome.LOCAL_ORIGIN_FAILURE and split:
            state.consecutive_local += 1
            limit = od.consecutive_local_origin_failure
            tripped = limit is not None and state.consecutive_local >= limit
        else:
            state.consecutive_5xx += 1
            limit = od.consecutive_5xx
            tripped = limit is not None and state.consecutive_5xx >= limit
            if outcome is Outcome.HTTP_5XX:
                state.consecutive_gateway = 0
            else:
                state.consecutive_gateway += 1
                limit = od.consecutive_gateway_failure
                tripped = tripped or (limit is not None and state.consecutive_gateway >= limit)
        if tripped and state.ejected_until is None:
            self._eject(state, od, now)

    def _eject(self, state: HostState, od: OutlierDetection, now: float) -> None:
        self.readmit_due(now)
        ejected = sum(1 for s in self.hosts.values() if s.ejected_until is not None)
        if (ejected + 1) * 100 > od.max_ejection_percent * len(self.hosts):
            return  # the veto; counters keep counting, so the next failure tries again
        if od.interval > 0 and state.times_ejected > 0:
            healthy_intervals = int((now - state.readmitted_at) // od.interval)
            state.times_ejected = max(0, state.times_ejected - healthy_intervals)
        state.times_ejected += 1
        cap = max(od.max_ejection_time, od.base_ejection_time)
        state.ejected_until = now + min(od.base_ejection_time * state.times_ejected, cap)
        state.consecutive_5xx = state.consecutive_gateway = state.consecutive_local = 0
        self.version += 1
