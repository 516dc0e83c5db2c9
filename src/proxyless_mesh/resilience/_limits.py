"""Per-cluster circuit-breaker counters: concurrent requests, pending requests, retries.

One `ClusterResources` per cluster, shared by every request of the process (sync
threads and async tasks alike). The numbers are native counters with their own
mutex (_counters.py); the queue of waiting tickets is guarded by a
`threading.Lock` held only for a few operations, taken only when a request
waits or a limit is reached; nothing ever blocks while holding it.

The model, stated exactly (an in-process reading of Envoy's thresholds):
- `max_requests` requests may be *active* (sending or waiting for a response,
  retries included: a retry reuses its request's slot).
- Beyond that, up to `max_pending_requests` more may be *pending*: each gets a
  `SlotTicket` and waits, first come first served, for an active request to
  finish; the finishing request hands its slot straight to the oldest ticket.
- Beyond both, the request overflows at once (Envoy flag UO): nothing ever
  queues without bound.
- Retries: with a `retry_budget`, active retries may be at most
  `budget_percent` of (active + pending requests, rounded down), but `min_retry_concurrency`
  are always allowed; without one, at most `max_retries` concurrent retries
  (Envoy ignores max_retries when a budget is set; so do we). A retry counts
  as active from its admission (before its backoff) until its attempt reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from proxyless_mesh.model import CircuitBreakers
from proxyless_mesh.resilience import _counters
from proxyless_mesh.resilience._counters import limits_spec

_ENVOY_DEFAULTS = CircuitBreakers()


class Admission(enum.Enum):
    """What `ClusterResources.admit` decided for a new request."""

    ADMITTED = "admitted"
    PENDING = "pending"  # wait on the returned SlotTicket
    OVERFLOW = "overflow"


class SlotTicket:
    """A pending request's place in line: granted when an active request ends.

    The wait primitive for drivers: the sync driver calls `wait(timeout)` (blocks
    the thread), the async one `await wait_async(timeout)`; both return whether
    the slot was granted. Grants may come from any thread, hence the callback
    registration under the owner's lock (no lost wake-ups).
    """

    __slots__ = ("_callbacks", "_granted", "_owner")

    def __init__(self, owner: ClusterResources) -> None:
        self._owner = owner
        self._granted = False
        self._callbacks: list[Callable[[], None]] = []

    @property
    def granted(self) -> bool:
        return self._granted

    def add_grant_callback(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the granting thread) once the slot is granted;
        at once if it already is."""
        with self._owner._lock:
            if not self._granted:
                self._callbacks.append(callback)
                return
        callback()

    def wait(self, timeout: float | None) -> bool:
        """Block up to `timeout` seconds (None: no limit) for the grant."""
        if self._granted:
            return True
        event = threading.Event()
        self.add_grant_callback(event.set)
        event.wait(timeout)
        return self._granted

    async def wait_async(self, timeout: float | None) -> bool:
        """Await up to `timeout` seconds (None: no limit) for the grant."""
        if self._granted:
            return True
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            # RuntimeError: the waiter's loop has closed, so nobody waits any
            # more; the flow's cleanup gives the granted slot back.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, woken)

        self.add_grant_callback(wake)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken, timeout)
        return self._granted


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ClusterResources:
    """The circuit-breaker counters of one cluster (see the module docstring).

    The numbers and the rules on them are the native counters (`_counters`);
    the queue of tickets is here, changed under `_lock` together with the
    counters' `pending`."""

    __slots__ = ("_counters", "_limits", "_lock", "_queue", "admit_now", "cluster")

    def __init__(self, cluster: str, limits: CircuitBreakers = _ENVOY_DEFAULTS) -> None:
        self.cluster = cluster
        self._limits = limits
        self._lock = threading.Lock()
        self._queue: deque[SlotTicket] = deque()
        self._counters: Any = _counters.native_counters(limits_spec(limits))
        #: `() -> bool`: take an active slot if one is free and nobody waits;
        #: False otherwise (then `admit()` queues or overflows the request).
        #: The native counters' own method: one crossing, no lock.
        self.admit_now: Callable[[], bool] = self._counters.admit_now

    @property
    def limits(self) -> CircuitBreakers:
        return self._limits

    @property
    def active_requests(self) -> int:
        return self.counts()[0]

    @property
    def pending_requests(self) -> int:
        return self.counts()[1]

    @property
    def active_retries(self) -> int:
        return self.counts()[2]

    @property
    def request_overflows(self) -> int:
        """Envoy's upstream_rq_pending_overflow."""
        return self.counts()[3]

    @property
    def retry_overflows(self) -> int:
        """Envoy's upstream_rq_retry_overflow."""
        return self.counts()[4]

    def counts(self) -> tuple[int, int, int, int, int]:
        """(active, pending, active retries, request overflows, retry
        overflows), read at once (what a metrics scrape asks)."""
        counts: tuple[int, int, int, int, int] = self._counters.snapshot()
        return counts

    def update(self, limits: CircuitBreakers) -> None:
        """New thresholds from CDS; the counters carry over. Raising
        max_requests lets waiting tickets in at once."""
        counters = self._counters
        with self._lock:
            self._limits = limits
            counters.set_limits(limits_spec(limits))
            granted = []
            while self._queue and counters.take_waiting():
                granted.append(self._grant_locked(self._queue.popleft()))
        for callbacks in granted:
            _run(callbacks)

    def admit(self) -> tuple[Admission, SlotTicket | None]:
        """Take an active slot, a place in line (with its ticket), or overflow."""
        with self._lock:
            decided = self._counters.admit()
            if decided == 0:
                return Admission.ADMITTED, None
            if decided == 1:
                ticket = SlotTicket(self)
                self._queue.append(ticket)
                return Admission.PENDING, ticket
            return Admission.OVERFLOW, None

    def release_request(self) -> None:
        """An active request ended: its slot goes to the oldest ticket, if any."""
        if self._counters.release_now():
            return  # nobody waits: one crossing, no lock
        with self._lock:
            if not self._counters.release_request():
                return
            callbacks = self._grant_locked(self._queue.popleft())
        _run(callbacks)

    def cancel(self, ticket: SlotTicket) -> bool:
        """Leave the line. True when the ticket was granted meanwhile: the
        caller then holds an active slot and must `release_request()` it."""
        with self._lock:
            if ticket._granted:
                return True
            try:
                self._queue.remove(ticket)
            except ValueError:
                pass  # already out of line (cancelled twice): nothing to undo
            else:
                self._counters.leave_line()
            ticket._callbacks.clear()
            return False

    def try_acquire_retry(self) -> bool:
        """Admit one more concurrent retry, or count a retry overflow."""
        with self._lock:
            admitted: bool = self._counters.try_acquire_retry()
        return admitted

    def release_retry(self) -> None:
        with self._lock:
            self._counters.release_retry()

    def _grant_locked(self, ticket: SlotTicket) -> list[Callable[[], None]]:
        ticket._granted = True
        callbacks, ticket._callbacks = ticket._callbacks, []
        return callbacks


def _run(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        callback()
