"""Reconnect pacing: a tenacity wait strategy driven outside tenacity's loop.

The stream loop is not a retry of one call (a stream that delivered config and
then ended is a success, after which the delay starts small again), so instead
of `AsyncRetrying` we keep our own attempt counter and ask the strategy for each
delay. Any tenacity wait strategy (or callable of the same shape) can be given.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, wait_random_exponential

WaitStrategy = Callable[[RetryCallState], float]


def default_wait() -> WaitStrategy:
    """Exponential from 0.1 s up to 10 s with full jitter, so many clients of a
    restarted control plane do not reconnect in lockstep."""
    return wait_random_exponential(multiplier=0.1, min=0.1, max=10.0)


class Backoff:
    """Successive delays from a wait strategy; `reset()` after a healthy stream."""

    def __init__(self, wait: WaitStrategy) -> None:
        self._wait = wait
        self._state = RetryCallState(AsyncRetrying(), None, (), {})

    @property
    def attempt(self) -> int:
        """The attempt the next delay is for (1-based)."""
        return self._state.attempt_number

    def next_delay(self) -> float:
        delay = float(self._wait(self._state))
        self._state.attempt_number += 1
        return delay

    def reset(self) -> None:
        self._state.attempt_number = 1
