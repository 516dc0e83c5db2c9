"""One request's life as a generator: faults, limits, tries, retries, deadline.

Like httpx's `Auth.auth_flow`, the engine makes every decision and does no
I/O: it yields `Sleep`, `WaitForSlot` and `Send` commands, a driver (sync or
async) performs them and sends back None or an `AttemptResult`, and the
generator's return value (`StopIteration.value`) is the `Finish`.

Order, as Envoy's filter chain has it: the fault filter first (a delay, then an
abort that never touches the cluster), then the cluster's circuit breakers,
then the router's tries. The route timeout starts after the fault delay, as
Envoy's router timer does.

Decisions where Envoy gave us a choice to make in-process, stated once:
- A retry is skipped when the route deadline would pass during its backoff:
  Envoy would sleep into a certain 504; we end at once with the outcome we have
  (noted on the Finish).
- Out of retries (flag URX) with a response: that response is returned, as
  Envoy does. Without one: the error of the last failure (UF, UC, UR or UT),
  with URX among the flags.
- No endpoint left for a retry: error UH (Envoy answers a local 503 UH then),
  not the previous attempt's response.
- A retry denied by max_retries or the retry budget: the outcome we have,
  with flag UO (Envoy's router sets UpstreamOverflow then).
- Counters are released in a `finally`, so a driver that abandons the flow
  (`close()`, an exception thrown in, garbage collection) releases them too.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Generator

from proxyless_mesh.model import Endpoint, FaultConfig, RetryPolicy
from proxyless_mesh.resilience._backoff import wait_envoy_jittered
from proxyless_mesh.resilience._deadline import expected_timeout_ms
from proxyless_mesh.resilience._limits import Admission, ClusterResources, SlotTicket
from proxyless_mesh.resilience._retry_on import compile_retry_on
from proxyless_mesh.resilience._types import (
    AttemptResult,
    Command,
    FailureKind,
    Finish,
    MeshFailure,
    Send,
    Sleep,
    WaitForSlot,
)

_Flow = Generator[Command, AttemptResult | None, Finish]

_FAILURE_FLAGS = {
    FailureKind.CONNECT_FAILURE: ("UF", "connect failure"),
    FailureKind.RESET: ("UC", "connection reset before a response"),
    FailureKind.REFUSED_STREAM: ("UR", "stream refused (REFUSED_STREAM)"),
    FailureKind.TIMEOUT: ("UT", "per-try timeout"),
}


def _no_reason() -> str:
    return "no endpoint can take the request"


def fault_draw(rng: random.Random, percentage: float) -> bool:
    """True with probability `percentage`/100 (one draw, as gRFC A33 does)."""
    return percentage >= 100.0 or (percentage > 0.0 and rng.random() * 100.0 < percentage)


def request_flow(
    *,
    route_name: str,
    cluster: str,
    policy: RetryPolicy | None,
    route_timeout: float | None,
    pick: Callable[[Collection[Endpoint]], Endpoint | None],
    resources: ClusterResources,
    clock: Callable[[], float],
    rng: random.Random,
    replayable: bool,
    fault: FaultConfig | None = None,
    no_endpoint_reason: Callable[[], str] = _no_reason,
) -> Flow:
    """Drive one request (see the module docstring for the protocol).

    `pick(exclude)` returns an endpoint, avoiding those in `exclude` when it
    can (it may return one of them when nothing else is left, as Envoy's
    previous_hosts predicate gives up after a few reselections), or None when
    the cluster has none; `no_endpoint_reason()` then says why (flag UH).
    `replayable` is False when the body cannot be sent again (not buffered):
    such a request gets one try. `route_timeout` None or 0 means no deadline.
    Without a fault or a timeout the flow is a `FirstTry` (no generator
    until a try fails or waits); it yields and returns what this one would.
    """
    if fault is None and not route_timeout and (policy is None or policy.per_try_timeout is None):
        return FirstTry(
            route_name, cluster, policy, pick, resources, clock, rng, replayable,
            no_endpoint_reason,
        )  # fmt: skip
    return _flow(
        route_name, cluster, policy, route_timeout, pick, resources, clock, rng, replayable,
        fault, no_endpoint_reason,
    )  # fmt: skip


def _flow(
    route_name: str,
    cluster: str,
    policy: RetryPolicy | None,
    route_timeout: float | None,
    pick: Callable[[Collection[Endpoint]], Endpoint | None],
    resources: ClusterResources,
    clock: Callable[[], float],
    rng: random.Random,
    replayable: bool,
    fault: FaultConfig | None,
    no_endpoint_reason: Callable[[], str],
) -> Generator[Command, AttemptResult | None, Finish]:
    """`request_flow` in general: every rule, as a generator."""
    flags: list[str] = []
    if fault is not None:
        if fault.delay is not None and fault_draw(rng, fault.delay.percentage):
            flags.append("DI")
            yield Sleep(fault.delay.delay)
        abort = fault.abort
        if (
            abort is not None
            and (abort.http_status is not None or abort.grpc_status is not None)
            and fault_draw(rng, abort.percentage)
        ):
            flags.append("FI")
            return Finish(
                abort_status=abort.http_status,
                abort_grpc_status=abort.grpc_status,
                flags=tuple(flags),
            )
    deadline = clock() + route_timeout if route_timeout else None
    lease = _Lease(resources)
    try:
        admission, ticket = resources.admit()
        if admission is Admission.ADMITTED:  # the common case, without a generator
            lease.holds_request = True
        else:
            refusal = yield from _limited(
                lease, admission, ticket, cluster, route_name, route_timeout, deadline, clock, flags
            )
            if refusal is not None:
                return refusal
        tries = _tries(
            lease, route_name, cluster, policy, route_timeout, deadline,
            pick, clock, rng, replayable, no_endpoint_reason, flags,
        )  # fmt: skip
        return (yield from tries)
    finally:
        lease.release()


def _released(lease: _Lease, flow: Generator[Command, AttemptResult | None, Finish]) -> _Flow:
    """`flow`, then `lease` released however it ends (as `_flow`'s finally)."""
    try:
        return (yield from flow)
    finally:
        lease.release()


class FirstTry:
    """`request_flow` without a fault or a timeout, as a plain object with
    a generator's `send`, `throw` and `close`: admission, the pick and the
    first Send, then the usual ending when that try answers and is not
    retried. Anything else (a queue or an overflow at admission, a try to
    retry or that failed) continues in the generator's own code (`_flow`,
    `_tries`), so each rule is written once. The drivers call `answered`
    after the first try, which returns the Finish instead of raising
    StopIteration. Two generators per request cost ~1 µs more."""

    __slots__ = ("_args", "_endpoint", "_held", "_rest", "_retriable", "_started")

    def __init__(
        self,
        route_name: str,
        cluster: str,
        policy: RetryPolicy | None,
        pick: Callable[[Collection[Endpoint]], Endpoint | None],
        resources: ClusterResources,
        clock: Callable[[], float],
        rng: random.Random,
        replayable: bool,
        no_endpoint_reason: Callable[[], str],
    ) -> None:
        self._args = (
            route_name, cluster, policy, pick, resources, clock, rng, replayable,
            no_endpoint_reason,
        )  # fmt: skip
        self._retriable = compile_retry_on(policy) if policy is not None else None
        self._started = False
        self._held = False  # an active slot of `resources`
        self._endpoint: Endpoint | None = None
        self._rest: _Flow | None = None

    def send(self, reply: AttemptResult | None) -> Command:
        """The next command; StopIteration carries the Finish, as a generator's."""
        if self._rest is not None:
            return self._rest.send(reply)
        if self._started:
            if reply is None or self._endpoint is None:
                raise TypeError("the driver must send an AttemptResult after a Send")
            after = self.answered(reply)
            if type(after) is Finish:
                raise StopIteration(after)
            return after  # type: ignore[return-value]
        self._started = True
        route_name, cluster, policy, pick, resources, clock, rng, replayable, reason = self._args
        if not resources.admit_now():  # a queue, or over the limits: the general flow
            self._rest = _flow(
                route_name, cluster, policy, None, pick, resources, clock, rng, replayable,
                None, reason,
            )  # fmt: skip
            return self._rest.send(None)
        self._held = True
        endpoint = pick(())
        if endpoint is None:
            self.close()
            facts: _TryFacts = (cluster, route_name, None, [], [], [])
            raise StopIteration(_end(None, _no_upstream(cluster, reason), 1, facts))
        self._endpoint = endpoint
        return Send(endpoint, None, 1, _FIRST_ATTEMPT)

    def answered(self, result: AttemptResult) -> Finish | Command:
        """After the first Send: the Finish, or the next command."""
        retriable = self._retriable
        if result.status is not None and (retriable is None or not retriable(result)):
            if self._held:
                self._held = False
                self._args[4].release_request()
            return _FIRST_TRY_ANSWERED
        route_name, cluster, policy, pick, resources, clock, rng, replayable, reason = self._args
        lease = _Lease(resources)
        lease.holds_request, self._held = self._held, False
        assert self._endpoint is not None  # set with the first Send
        tries = _tries(
            lease, route_name, cluster, policy, None, None, pick, clock, rng, replayable,
            reason, [], first=(self._endpoint, result),
        )  # fmt: skip
        self._rest = _released(lease, tries)
        return self._rest.send(None)

    def __iter__(self) -> FirstTry:
        return self

    def __next__(self) -> Command:
        return self.send(None)

    def throw(self, error: BaseException) -> Command:
        """As a generator's: raised where the flow waits (its cleanup runs)."""
        if self._rest is not None:
            return self._rest.throw(error)
        self.close()
        raise error

    def close(self) -> None:
        """Release what the flow holds (a generator's close() runs its finally)."""
        if self._rest is not None:
            self._rest.close()
        elif self._held:
            self._held = False
            self._args[4].release_request()


Flow = _Flow | FirstTry


class _Lease:
    """What one flow holds in its cluster's counters, released exactly once."""

    __slots__ = ("holds_request", "holds_retry", "resources", "ticket")

    def __init__(self, resources: ClusterResources) -> None:
        self.resources = resources
        self.holds_request = False
        self.holds_retry = False
        self.ticket: SlotTicket | None = None

    def end_retry(self) -> None:
        if self.holds_retry:
            self.holds_retry = False
            self.resources.release_retry()

    def release(self) -> None:
        self.end_retry()
        if self.ticket is not None:
            ticket, self.ticket = self.ticket, None
            if self.resources.cancel(ticket):
                self.holds_request = True
        if self.holds_request:
            self.holds_request = False
            self.resources.release_request()


def _limited(
    lease: _Lease,
    admission: Admission,
    ticket: SlotTicket | None,
    cluster: str,
    route_name: str,
    route_timeout: float | None,
    deadline: float | None,
    clock: Callable[[], float],
    flags: list[str],
) -> Generator[Command, AttemptResult | None, Finish | None]:
    """Wait in line for an active slot (admission PENDING), or end the
    request (OVERFLOW); a Finish on failure, None once the slot is held."""
    resources = lease.resources
    if admission is Admission.OVERFLOW or ticket is None:
        limits = resources.limits
        flags.append("UO")
        return Finish(
            error=MeshFailure(
                "UO",
                f"cluster {cluster} is over its limits: {limits.max_requests} concurrent "
                f"requests (http2MaxRequests) and {limits.max_pending_requests} pending "
                "(http1MaxPendingRequests) are taken; the request was not sent",
            ),
            flags=tuple(flags),
        )
    lease.ticket = ticket
    while not ticket.granted:
        remaining = None if deadline is None else deadline - clock()
        if remaining is not None and remaining <= 0:
            if lease.resources.cancel(ticket):
                break  # granted at the last moment: take it (the clock decides below)
            lease.ticket = None
            flags.append("UT")
            return Finish(error=_route_timeout(route_name, route_timeout, 0), flags=tuple(flags))
        yield WaitForSlot(ticket, remaining)
    lease.ticket = None
    lease.holds_request = True
    return None


def _no_upstream(cluster: str, reason: Callable[[], str]) -> MeshFailure:
    return MeshFailure("UH", f"no healthy upstream in cluster {cluster}: {reason()}")


def _route_timeout(route_name: str, limit: float | None, attempts: int) -> MeshFailure:
    return MeshFailure(
        "UT",
        f"route {route_name!r} timed out: its timeout of {limit:g}s passed "
        f"after {attempts} attempt(s); raise the VirtualService timeout or fix the upstream",
        timeout=limit,
    )


def _tries(
    lease: _Lease,
    route_name: str,
    cluster: str,
    policy: RetryPolicy | None,
    route_timeout: float | None,
    deadline: float | None,
    pick: Callable[[Collection[Endpoint]], Endpoint | None],
    clock: Callable[[], float],
    rng: random.Random,
    replayable: bool,
    no_endpoint_reason: Callable[[], str],
    flags: list[str],
    first: tuple[Endpoint, AttemptResult] | None = None,
) -> Generator[Command, AttemptResult | None, Finish]:
    """The tries; `first` is a first try already made (by `FirstTry`),
    without a deadline."""
    notes: list[str] = []
    per_try = policy.per_try_timeout if policy is not None else None
    retriable = compile_retry_on(policy) if policy is not None else None
    avoid_tried = policy is not None and policy.retry_other_hosts
    tried: list[Endpoint] = []
    attempt = 0
    facts = (cluster, route_name, per_try, tried, flags, notes)

    while True:
        attempt += 1
        by_route = False
        if first is not None:
            endpoint, result = first
            first = None
            tried.append(endpoint)
        else:
            picked = pick(tried if avoid_tried else ())
            if picked is None:
                return _end(None, _no_upstream(cluster, no_endpoint_reason), attempt, facts)
            endpoint = picked
            timeout = per_try
            if deadline is not None:
                remaining = deadline - clock()
                if remaining <= 0:
                    failure = _route_timeout(route_name, route_timeout, attempt - 1)
                    return _end(None, failure, attempt, facts)
                if timeout is None or remaining <= timeout:
                    timeout, by_route = remaining, True
            headers = _FIRST_ATTEMPT if attempt == 1 else (("x-envoy-attempt-count", str(attempt)),)
            if timeout is not None:
                headers += (("x-envoy-expected-rq-timeout-ms", expected_timeout_ms(timeout)),)
            tried.append(endpoint)
            reply = yield Send(endpoint, timeout, attempt, headers)
            lease.end_retry()
            if reply is None:
                raise TypeError("the driver must send an AttemptResult after a Send")
            result = reply
        if result.failure is FailureKind.TIMEOUT and by_route:
            return _end(None, _route_timeout(route_name, route_timeout, attempt), attempt, facts)
        if retriable is None or policy is None or not retriable(result):
            return _end(result, None, attempt, facts)
        if attempt > policy.num_retries:
            flags.append("URX")
            return _end(result, None, attempt, facts)
        if not replayable:
            notes.append("not retried: the request body cannot be replayed (not buffered)")
            return _end(result, None, attempt, facts)
        backoff = wait_envoy_jittered(policy.base_interval, policy.max_interval, rng)
        delay = backoff.interval(attempt)
        if deadline is not None and clock() + delay >= deadline:
            notes.append(
                f"not retried: the route timeout of {route_timeout:g}s would pass during "
                f"the {delay * 1000:.0f} ms backoff"
            )
            return _end(result, None, attempt, facts)
        if not lease.resources.try_acquire_retry():
            flags.append("UO")
            notes.append(
                f"not retried: cluster {cluster} is at its concurrent retry limit "
                "(max_retries or retry budget)"
            )
            return _end(result, None, attempt, facts)
        lease.holds_retry = True
        yield Sleep(delay)


_FIRST_ATTEMPT: tuple[tuple[str, str], ...] = (("x-envoy-attempt-count", "1"),)
_FIRST_TRY_ANSWERED = Finish(use_last_response=True, attempts=1)
"""The usual ending, shared (Finish is frozen): no flags, no notes."""

_TryFacts = tuple[str, str, float | None, list[Endpoint], list[str], list[str]]


def _end(
    result: AttemptResult | None, error: MeshFailure | None, attempt: int, facts: _TryFacts
) -> Finish:
    """The Finish of `_tries`: the last response, or `error`, or (no response
    and no error given) the error the last try's failure makes."""
    cluster, route_name, per_try, tried, flags, notes = facts
    if error is None and result is not None and result.status is None:
        flag, what = _FAILURE_FLAGS[result.failure or FailureKind.RESET]
        limit = per_try if result.failure is FailureKind.TIMEOUT else None
        detail = f" of {per_try:g}s" if limit is not None else ""
        error = MeshFailure(
            flag,
            f"{what}{detail} to {tried[-1].address}:{tried[-1].port} in cluster "
            f"{cluster} (route {route_name!r}, attempt {attempt})",
            timeout=limit,
        )
    if error is None and attempt == 1 and not flags and not notes:
        return _FIRST_TRY_ANSWERED
    if error is not None and error.flag not in flags:
        flags.insert(0, error.flag)
    return Finish(
        use_last_response=error is None,
        error=error,
        flags=tuple(flags),
        notes=tuple(notes),
        attempts=attempt,
    )
