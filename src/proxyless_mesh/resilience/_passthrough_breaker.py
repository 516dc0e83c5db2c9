"""Circuit breakers for hosts outside the mesh (outbound policy ALLOW_ANY).

Mesh services get Envoy's limits and outlier detection from the control
plane; a host the mesh passes through untouched gets nothing. Opt in with
`Mesh(passthrough_breaker=PassthroughBreaker(fail_max=5, reset_timeout=30))`:
one `pybreaker.CircuitBreaker` per `host:port` then counts consecutive
failures (an httpx transport error, or a 5xx answer) of the requests passed
through; at `fail_max` it opens and requests to that host fail at once with
`PassthroughCircuitOpenError` (Envoy flag UO, as its circuit breaking: the
request is refused locally without reaching the upstream). After
`reset_timeout` seconds one trial request goes through (half-open; the
others are still refused): a success closes the breaker, a failure opens it
for another `reset_timeout`.

pybreaker holds the failure counter, the thresholds, the state machine and
the listeners. Two things are done around it: pybreaker's `call()` holds the
breaker's lock for the whole guarded call (it would serialize every request
to a host) and cannot await, so the request runs outside it and its outcome
is then fed to `call()` (a function that raises the failure or returns);
and pybreaker reads the wall clock, so the storage translates the
`clock` given here (monotonic by default, injectable for tests) into the
`opened_at` pybreaker compares with. Each state change is logged once and
counted (`proxyless_mesh.passthrough_breaker.transitions`, with the host
and the new state). Hosts beyond `max_hosts` are passed through unguarded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pybreaker  # type: ignore[import-untyped]
from opentelemetry.metrics import Meter

from proxyless_mesh.errors import PassthroughCircuitOpenError

__all__ = ["PassthroughBreaker"]

log = logging.getLogger("proxyless_mesh.resilience")
_R = TypeVar("_R", bound=httpx.Response)


class _Failed(Exception):
    """The outcome fed to pybreaker for a 5xx answer or a failed send."""


class _ClockStorage(pybreaker.CircuitMemoryStorage):  # type: ignore[misc]
    """pybreaker's in-memory state, with `opened_at` read on our clock: the
    wall time it returns is as far in the past as `clock` has advanced
    since the breaker opened."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self._clock = clock
        self.opened_clock = 0.0

    @property
    def opened_at(self) -> datetime | None:
        if self._opened_at is None:
            return None
        return datetime.now(UTC) - timedelta(seconds=self._clock() - self.opened_clock)

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._opened_at = value
        self.opened_clock = self._clock()


class _Listener(pybreaker.CircuitBreakerListener):  # type: ignore[misc]
    def __init__(self, owner: PassthroughBreaker) -> None:
        self._owner = owner

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self._owner.transitioned(cb.name, getattr(old_state, "name", "-"), new_state.name)


class _Host:
    """One host's breaker and whether its half-open trial is out."""

    __slots__ = ("breaker", "lock", "storage", "trial_out")

    def __init__(self, breaker: pybreaker.CircuitBreaker, storage: _ClockStorage) -> None:
        self.breaker = breaker
        self.storage = storage
        self.lock = threading.Lock()
        self.trial_out = False


def _replay(failure: BaseException | None) -> None:
    if failure is not None:
        raise failure


class PassthroughBreaker:
    """Per-host circuit breakers for passed-through requests (module docstring)."""

    def __init__(
        self,
        fail_max: int = 5,
        reset_timeout: float = 30.0,
        *,
        max_hosts: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fail_max < 1 or reset_timeout <= 0:
            raise ValueError("fail_max must be at least 1 and reset_timeout positive")
        self.fail_max = fail_max
        self.reset_timeout = reset_timeout
        self.max_hosts = max_hosts
        self.clock = clock
        #: State changes so far (also counted in the metrics when a meter is set).
        self.transitions = 0
        self._hosts: dict[str, _Host] = {}
        self._lock = threading.Lock()
        self._listener = _Listener(self)
        self._counter: Any = None

    def use_meter(self, meter: Meter | None) -> None:
        """Count state changes with this meter (the Mesh passes its own)."""
        if meter is not None:
            self._counter = meter.create_counter(
                "proxyless_mesh.passthrough_breaker.transitions",
                description="state changes of the breakers of passed-through hosts",
            )

    def state(self, authority: str) -> str:
        """ "closed", "open" or "half-open" ("closed" for a host never seen)."""
        host = self._hosts.get(authority)
        return host.breaker.current_state if host is not None else pybreaker.STATE_CLOSED

    def transitioned(self, authority: str, old: str, new: str) -> None:
        """A breaker changed state: log it once and count it."""
        self.transitions += 1
        level = logging.WARNING if new == pybreaker.STATE_OPEN else logging.INFO
        log.log(level, "passthrough circuit breaker of %s: %s -> %s", authority, old, new)
        if self._counter is not None:
            self._counter.add(1, {"host": authority, "state": new})

    def send(
        self, authority: str, send: Callable[[httpx.Request], _R], request: httpx.Request
    ) -> _R:
        """`send(request)` guarded by the breaker of `authority`."""
        host, trial = self._admit(authority, request)
        if host is None:
            return send(request)
        try:
            response = send(request)
        except BaseException as exc:
            self._record(host, trial, exc)
            raise
        return self._answered(host, trial, response)

    async def send_async(
        self, authority: str, send: Callable[[httpx.Request], Awaitable[_R]], request: httpx.Request
    ) -> _R:
        """send() for asyncio: its twin but for the awaits."""
        host, trial = self._admit(authority, request)
        if host is None:
            return await send(request)
        try:
            response = await send(request)
        except BaseException as exc:
            self._record(host, trial, exc)
            raise
        return self._answered(host, trial, response)

    def _answered(self, host: _Host, trial: bool, response: _R) -> _R:
        """Record an answer (a 5xx counts as a failure) and hand it back."""
        status = response.status_code
        self._record(host, trial, _Failed(status) if status >= 500 else None)
        return response

    def _host(self, authority: str) -> _Host | None:
        host = self._hosts.get(authority)
        if host is None:
            with self._lock:
                host = self._hosts.get(authority)
                if host is None:
                    if len(self._hosts) >= self.max_hosts:
                        return None
                    storage = _ClockStorage(self.clock)
                    breaker = pybreaker.CircuitBreaker(
                        fail_max=self.fail_max,
                        reset_timeout=self.reset_timeout,
                        listeners=[self._listener],
                        state_storage=storage,
                        name=authority,
                        throw_new_error_on_trip=False,
                    )
                    host = self._hosts[authority] = _Host(breaker, storage)
        return host

    def _admit(self, authority: str, request: httpx.Request) -> tuple[_Host | None, bool]:
        """(the host's breaker, whether this request is the half-open trial)
        when the request may go; raises when the breaker is open."""
        host = self._host(authority)
        if host is None or host.breaker.current_state == pybreaker.STATE_CLOSED:
            return host, False
        with host.lock:
            state = host.breaker.current_state
            if state == pybreaker.STATE_OPEN:
                waited = self.clock() - host.storage.opened_clock
                if waited >= self.reset_timeout and not host.trial_out:
                    host.trial_out = True
                    host.breaker.half_open()
                    return host, True
            elif state == pybreaker.STATE_CLOSED:
                return host, False
        raise PassthroughCircuitOpenError(
            f"{authority}: the circuit breaker of this passed-through host is {state} after "
            f"{self.fail_max} consecutive failures; it lets one request try again "
            f"{self.reset_timeout:g}s after it opened",
            request=request,
        )

    def _record(self, host: _Host, trial: bool, failure: BaseException | None) -> None:
        """Feed one outcome to pybreaker. While it is open or half-open, only
        the trial's outcome counts: a request sent before it opened says
        nothing about the host now."""
        breaker = host.breaker
        if not trial and breaker.current_state != pybreaker.STATE_CLOSED:
            return
        try:
            breaker.call(_replay, failure)
        except BaseException:  # the replayed failure, already raised to the caller
            pass
        finally:
            if trial:
                host.trial_out = False
