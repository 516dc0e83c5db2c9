"""Per-cluster circuit-breaker counters: concurrent requests, pending requests, retries.

One `ClusterResources` per cluster, shared by every request of the process (sync
threads and async tasks alike), so the counters are guarded by a `threading.Lock`
held only for a few integer operations; nothing ever blocks while holding it.

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

from proxyless_mesh.model import CircuitBreakers

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
    """The circuit-breaker counters of one cluster (see the module docstring)."""

    __slots__ = (
        "_active",
        "_limits",
        "_lock",
        "_queue",
        "_retries",
        "cluster",
        "request_overflows",
        "retry_overflows",
    )

    def __init__(self, cluster: str, limits: CircuitBreakers = _ENVOY_DEFAULTS) -> None:
        self.cluster = cluster
        self._limits = limits
        self._lock = threading.Lock()
        self._active = 0
        self._retries = 0
        self._queue: deque[SlotTicket] = deque()
        self.request_overflows = 0  # Envoy upstream_rq_pending_overflow
        self.retry_overflows = 0  # Envoy upstream_rq_retry_overflow

    @property
    def limits(self) -> CircuitBreakers:
        return self._limits

    @property
    def active_requests(self) -> int:
        return self._active

    @property
    def pending_requests(self) -> int:
        return len(self._queue)

    @property
    def active_retries(self) -> int:
        return self._retries

    def update(self, limits: CircuitBreakers) -> None:
        """New thresholds from CDS; the counters carry over. Raising
        max_requests lets waiting tickets in at once."""
        with self._lock:
            self._limits = limits
            granted = []
            while self._queue and self._active < limits.max_requests:
                self._active += 1
                granted.append(self._grant_locked(self._queue.popleft()))
        for callbacks in granted:
            _run(callbacks)

    def admit(self) -> tuple[Admission, SlotTicket | None]:
        """Take an active slot, a place in line (with its ticket), or overflow."""
        with self._lock:
            limits = self._limits
            if self._active < limits.max_requests and not self._queue:
                self._active += 1
                return Admission.ADMITTED, None
            if len(self._queue) < limits.max_pending_requests:
                ticket = SlotTicket(self)
                self._queue.append(ticket)
                return Admission.PENDING, ticket
            self.request_overflows += 1
            return Admission.OVERFLOW, None

    def release_request(self) -> None:
        """An active request ended: its slot goes to the oldest ticket, if any."""
        with self._lock:
            if self._queue and self._active <= self._limits.max_requests:
                callbacks = self._grant_locked(self._queue.popleft())
            else:
                self._active -= 1
                return
        _run(callbacks)

    def cancel(self, ticket: SlotTicket) -> bool:
        """Leave the line. True when the ticket was granted meanwhile: the
        caller then holds an active slot and must `release_request()` it."""
        with self._lock:
            if ticket._granted:
                return True
            # ValueError: already out of line (cancelled twice), nothing to undo.
            with contextlib.suppress(ValueError):
                self._queue.remove(ticket)
            ticket._callbacks.clear()
            return False

    def try_acquire_retry(self) -> bool:
        """Admit one more concurrent retry, or count a retry overflow."""
        with self._lock:
            budget = self._limits.retry_budget
            if budget is not None:
                # Whole retries, rounded down, as Envoy's integer conversion does.
                share = int(budget.budget_percent / 100.0 * (self._active + len(self._queue)))
                allowed = max(budget.min_retry_concurrency, share)
            else:
                allowed = self._limits.max_retries
            if self._retries < allowed:
                self._retries += 1
                return True
            self.retry_overflows += 1
            return False

    def release_retry(self) -> None:
        with self._lock:
            self._retries -= 1

    def _grant_locked(self, ticket: SlotTicket) -> list[Callable[[], None]]:
        ticket._granted = True
        callbacks, ticket._callbacks = ticket._callbacks, []
        return callbacks


def _run(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        callback()
