"""Envoy's fully jittered exponential backoff, as a tenacity wait strategy.

Envoy delays retry N (1-based) by a uniform draw in [0, (2**N - 1) * base),
capped at `max_interval`: with the 25 ms default, 0-25 ms, then 0-75 ms, then
0-175 ms, never more than 250 ms. tenacity's `wait_random_exponential` is the
same idea but draws from the global `random` module and widens as
base * 2**(N-1), so this subclasses tenacity's `wait_base` instead: it composes
with tenacity's other strategies (`+`, `wait_chain`), takes an injectable RNG,
and the engine calls `interval()` directly since tenacity's loop cannot drive
a sans-I/O generator.
"""

from __future__ import annotations

import random

from tenacity import RetryCallState
from tenacity.wait import wait_base

_MAX_SHIFT = 62  # beyond this, the cap always applies (and 2**N stays an int op)


def backoff_cap(retry: int, base: float, max_interval: float) -> float:
    """The upper bound of retry `retry`'s jittered delay (Envoy's formula)."""
    if base <= 0:
        return 0.0
    if retry >= _MAX_SHIFT:
        return max_interval
    return min(((1 << retry) - 1) * base, max_interval)


class wait_envoy_jittered(wait_base):  # tenacity's lower-case naming for strategies
    """Full-jitter exponential backoff with Envoy's bounds and an injected RNG."""

    def __init__(self, base: float, max_interval: float, rng: random.Random) -> None:
        self.base = base
        self.max_interval = max_interval
        self.rng = rng

    def interval(self, retry: int) -> float:
        """Delay before retry number `retry` (1 = the first retry)."""
        return self.rng.uniform(0.0, backoff_cap(retry, self.base, self.max_interval))

    def __call__(self, retry_state: RetryCallState) -> float:
        # tenacity numbers attempts from 1 and asks after a failed attempt,
        # so the retry being scheduled has the attempt's own number.
        return self.interval(retry_state.attempt_number)
