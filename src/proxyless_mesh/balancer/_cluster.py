"""ClusterBalancer: one cluster's endpoint choice, built once per config update.

Construction does the work (flatten the assignment, carry per-endpoint state
over from the previous balancer, compute the active set, build the policy's
schedule / ring / table). `pick` is then a few array reads plus one
`next()` or `random()` call. Health and ejection changes do not mutate
anything a pick reads: they bump a version, and the next pick rebuilds the
active set and picker and swaps one reference (copy-on-write), so picks
never lock. Time-driven changes (readmission after ejection, slow-start
steps) are noticed the same way, by comparing the injected clock with the
active set's `refresh_at`.

Slow start: an endpoint's first-seen time is carried over through
`previous`. Endpoints in the very first assignment a cluster's balancers
see count as old, so a process starting up does not slow-start the whole
cluster; only endpoints that appear later ramp. As in Envoy and Istio
(warmupDurationSecs), slow start applies to ROUND_ROBIN and LEAST_REQUEST
only.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Collection

from proxyless_mesh.balancer._active import ActiveSet, HostEntry, compute_active
from proxyless_mesh.balancer._outcome import Outcome
from proxyless_mesh.balancer._outlier import ClusterState, HostState
from proxyless_mesh.balancer._pickers import (
    Flat,
    MaglevPicker,
    RingHashPicker,
    flat_pick,
    hash_pick,
)
from proxyless_mesh.model import (
    Cluster,
    ClusterLoadAssignment,
    Endpoint,
    LbPolicy,
    Locality,
    MaglevConfig,
    RingHashConfig,
)

_NOWHERE = Locality()
_SLOW_START_POLICIES = frozenset({LbPolicy.ROUND_ROBIN, LbPolicy.LEAST_REQUEST})
# Picks tried before scanning when a retry excludes endpoints already tried.
_EXCLUDE_ATTEMPTS = 8


class _Picker:
    __slots__ = ()

    def pick(self, hash_key: int | None = None) -> Endpoint | None:
        return None


class _Current:
    """Everything a pick reads, swapped as one reference."""

    __slots__ = ("active", "endpoints", "pick", "refresh_at", "timed", "version")

    def __init__(
        self,
        active: ActiveSet,
        pick: Callable[[int | None], Endpoint | None],
        endpoints: tuple[Endpoint, ...],
        version: int,
    ) -> None:
        self.active = active
        self.pick = pick
        self.endpoints = endpoints
        self.version = version
        self.refresh_at = active.refresh_at
        self.timed = active.refresh_at != math.inf


class ClusterBalancer:
    """The per-cluster picker the data path calls; `reason` explains an empty one."""

    _shared: ClusterState

    def __init__(
        self,
        cluster: Cluster | None,
        assignment: ClusterLoadAssignment | None,
        *,
        local_locality: Locality = _NOWHERE,
        previous: ClusterBalancer | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        name: str = "",
    ) -> None:
        """`name` is only needed when `cluster` is None (it defaults to the
        cluster's name). `local_locality` is kept for observability: the
        control plane already encodes locality preference in priorities
        (computed per client), so balancing does not need it."""
        self.name = name or (cluster.name if cluster is not None else "")
        self.local_locality = local_locality
        self.policy = cluster.lb_policy if cluster is not None else LbPolicy.ROUND_ROBIN
        self._cluster = cluster
        #: False when the control plane has sent no such cluster (Envoy: NC).
        #: A plain attribute: the router reads it on every request.
        self.cluster_known = cluster is not None
        self._assignment = assignment
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        inherit = previous is not None and previous.name == self.name
        shared: ClusterState = (
            previous._shared if previous is not None and inherit else ClusterState()
        )
        self._shared = shared
        if not inherit:
            shared.counter = itertools.count(self._rng.randrange(1 << 16))
        now = clock()
        self._hosts = self._flatten(assignment, shared, now)
        if assignment is not None:
            shared.seen_assignment = True
        self._by_id = {id(h.endpoint): h.state for h in self._hosts}
        self._by_key = {(h.endpoint.address, h.endpoint.port): h.state for h in self._hosts}
        self._od = cluster.outlier_detection if cluster is not None else None
        self._watch = self._od is not None or (
            cluster is not None
            and cluster.slow_start is not None
            and cluster.lb_policy in _SLOW_START_POLICIES
        )
        if cluster is None:
            self._fixed_reason = "the control plane has no such cluster"
        elif assignment is None:
            self._fixed_reason = "no endpoint assignment yet"
        else:
            self._fixed_reason = ""
        self._current = self._build(now)

    @staticmethod
    def _flatten(
        assignment: ClusterLoadAssignment | None, shared: ClusterState, now: float
    ) -> tuple[HostEntry, ...]:
        if assignment is None:
            return ()
        first_seen = now if shared.seen_assignment else -math.inf
        old = shared.hosts
        hosts: dict[tuple[str, int], HostState] = {}
        entries: list[HostEntry] = []
        for index, group in enumerate(assignment.localities):
            for endpoint in group.endpoints:
                key = (endpoint.address, endpoint.port)
                state = hosts.get(key) or old.get(key) or HostState(first_seen)
                hosts[key] = state
                entries.append(HostEntry(endpoint, group.priority, index, group.weight, state))
        shared.hosts = hosts
        return tuple(entries)

    def _build(self, now: float) -> _Current:
        shared = self._shared
        version = shared.version
        cluster, assignment = self._cluster, self._assignment
        if cluster is None or assignment is None:
            empty = ActiveSet((), self._fixed_reason, math.inf)
            return _Current(empty, _Picker().pick, (), version)
        slow_start = cluster.slow_start if cluster.lb_policy in _SLOW_START_POLICIES else None
        active = compute_active(
            self._hosts,
            assignment.overprovisioning_factor,
            cluster.panic_threshold,
            slow_start,
            now,
        )
        if not active.groups:
            return _Current(active, _Picker().pick, (), version)
        flat = Flat(active.groups, self._rng)
        policy = cluster.lb_policy
        pick: Callable[[int | None], Endpoint | None]
        if policy is LbPolicy.ROUND_ROBIN:
            pick = flat_pick("round_robin", flat, shared.counter)
        elif policy is LbPolicy.LEAST_REQUEST:
            pick = flat_pick("least_request", flat, shared.counter)
        elif policy is LbPolicy.RANDOM:
            pick = flat_pick("random", flat, shared.counter)
        elif policy is LbPolicy.RING_HASH:
            ring = RingHashPicker(active.groups, flat, cluster.ring_hash or RingHashConfig())
            pick = hash_pick(ring)
        else:
            pick = hash_pick(MaglevPicker(active.groups, flat, cluster.maglev or MaglevConfig()))
        return _Current(active, pick, flat.endpoints, version)

    def _refresh(self) -> _Current:
        now = self._clock()
        with self._shared.lock:  # rare (a change happened): serialise with ejections
            self._shared.readmit_due(now)
        current = self._current = self._build(now)
        return current

    @property
    def reason(self) -> str:
        """Why no endpoint can be picked ("" when one can)."""
        current = self._current
        if self._watch and (
            current.version != self._shared.version
            or (current.timed and self._clock() >= current.refresh_at)
        ):
            current = self._refresh()
        return current.active.reason

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The endpoints currently taking new requests."""
        return self._current.endpoints

    def pick(
        self, hash_key: int | None = None, exclude: Collection[Endpoint] = ()
    ) -> Endpoint | None:
        """An endpoint for a new request, or None (see `reason`).

        `hash_key` drives RING_HASH / MAGLEV (without one they pick at
        random). `exclude` holds endpoints this request already tried: they
        are avoided when any other endpoint can serve (Envoy's
        previous_hosts retry predicate), and used when none can."""
        current = self._current
        if self._watch and (
            current.version != self._shared.version
            or (current.timed and self._clock() >= current.refresh_at)
        ):
            current = self._refresh()
        endpoint = current.pick(hash_key)
        if exclude and endpoint is not None and endpoint in exclude:
            return self._pick_excluding(current, hash_key, exclude, endpoint)
        return endpoint

    def _pick_excluding(
        self,
        current: _Current,
        hash_key: int | None,
        exclude: Collection[Endpoint],
        first: Endpoint,
    ) -> Endpoint:
        key = hash_key
        for _ in range(_EXCLUDE_ATTEMPTS):
            if key is not None:
                # A different but deterministic key: a retry of the same key
                # lands on the same second choice in every client.
                key = (key * 0x9E3779B97F4A7C15 + 1) & 0xFFFFFFFFFFFFFFFF
            candidate = current.pick(key)
            if candidate is not None and candidate not in exclude:
                return candidate
        others = [e for e in current.endpoints if e not in exclude]
        if others:
            return others[self._rng.randrange(len(others))]
        return first

    def _state(self, endpoint: Endpoint) -> HostState | None:
        state = self._by_id.get(id(endpoint))
        if state is None:
            state = self._by_key.get((endpoint.address, endpoint.port))
        return state

    def on_start(self, endpoint: Endpoint) -> None:
        """A request was sent to `endpoint` (in-flight + 1)."""
        state = self._by_id.get(id(endpoint)) or self._state(endpoint)  # the first: no call
        if state is not None:
            state.flight.append(None)  # atomic: no lock (see HostState)

    def on_finish(self, endpoint: Endpoint, outcome: Outcome) -> None:
        """A request to `endpoint` ended (in-flight - 1) with `outcome`, which
        outlier detection counts. Call it on the balancer `on_start` was
        called on; state is shared with newer balancers of the cluster."""
        state = self._by_id.get(id(endpoint)) or self._state(endpoint)
        if state is None:
            return
        del state.flight[-1:]  # atomic; a no-op when empty (on_start was not called)
        od = self._od
        if od is None or (
            outcome is Outcome.SUCCESS
            and not (state.consecutive_5xx or state.consecutive_gateway or state.consecutive_local)
        ):  # nothing to count or reset: no lock (as if it came before a failure being counted)
            return
        shared = self._shared
        with shared.lock:
            if (
                outcome is not Outcome.SUCCESS
                or state.consecutive_5xx
                or state.consecutive_gateway
                or state.consecutive_local
            ):
                shared.record(state, outcome, od, self._clock())

    def in_flight(self, endpoint: Endpoint) -> int:
        """Requests sent to `endpoint` and not finished (for stats and tests)."""
        state = self._state(endpoint)
        return state.in_flight if state is not None else 0

    def is_ejected(self, endpoint: Endpoint) -> bool:
        """Whether outlier detection has `endpoint` ejected right now."""
        state = self._state(endpoint)
        if state is None or state.ejected_until is None:
            return False
        return state.ejected_until > self._clock()

    @property
    def size(self) -> int:
        """How many endpoints are taking new requests."""
        return len(self._current.endpoints)
