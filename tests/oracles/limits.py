"""The native `ClusterCounters` in plain Python, with the same constructor and
methods: the reference the native circuit-breaker counters are held to (Envoy's
thresholds, as resilience/_limits.py states them); not shipped. Single-threaded
use only (the differential tests drive it from one thread)."""

from __future__ import annotations

LimitsSpec = tuple[int, int, int, tuple[float, int] | None]


class ClusterCounters:
    """Admission, the line, retries and overflow counts, by the numbers."""

    __slots__ = ("_limits", "active", "pending", "request_overflows", "retries", "retry_overflows")

    def __init__(self, limits: LimitsSpec) -> None:
        self._limits = limits
        self.active = self.pending = self.retries = 0
        self.request_overflows = self.retry_overflows = 0

    def set_limits(self, limits: LimitsSpec) -> None:
        self._limits = limits

    def admit_now(self) -> bool:
        """Take an active slot if one is free and nobody waits."""
        if self.active < self._limits[0] and self.pending == 0:
            self.active += 1
            return True
        return False

    def admit(self) -> int:
        """0: admitted (active + 1); 1: wait in line (pending + 1); 2: overflow."""
        if self.admit_now():
            return 0
        if self.pending < self._limits[1]:
            self.pending += 1
            return 1
        self.request_overflows += 1
        return 2

    def release_request(self) -> bool:
        """True: the slot goes to the oldest waiting request; False: active - 1."""
        if self.pending > 0 and self.active <= self._limits[0]:
            self.pending -= 1
            return True
        self.active -= 1
        return False

    def release_now(self) -> bool:
        """Nobody waits: active - 1 (True); else False (then `release_request`)."""
        if self.pending > 0:
            return False
        self.active -= 1
        return True

    def take_waiting(self) -> bool:
        """One waiting request takes a free slot (after the limits rose)."""
        if self.pending > 0 and self.active < self._limits[0]:
            self.pending -= 1
            self.active += 1
            return True
        return False

    def leave_line(self) -> None:
        self.pending -= 1

    def try_acquire_retry(self) -> bool:
        budget = self._limits[3]
        if budget is not None:
            # Whole retries, rounded down, as Envoy's integer conversion does.
            share = int(budget[0] / 100.0 * (self.active + self.pending))
            allowed = max(budget[1], share)
        else:
            allowed = self._limits[2]
        if self.retries < allowed:
            self.retries += 1
            return True
        self.retry_overflows += 1
        return False

    def release_retry(self) -> None:
        self.retries -= 1

    def snapshot(self) -> tuple[int, int, int, int, int]:
        """(active, pending, retries, request_overflows, retry_overflows)"""
        return (
            self.active,
            self.pending,
            self.retries,
            self.request_overflows,
            self.retry_overflows,
        )
