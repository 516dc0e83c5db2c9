"""The vocabulary between the request engine and its drivers.

The engine (`request_flow`) yields commands (`Send`, `Sleep`, `WaitForSlot`)
and returns a `Finish`; the driver performs each command and reports back
(`AttemptResult` after a Send, None after a Sleep or a WaitForSlot). Plain
values, no I/O types, so one engine serves the sync and async drivers.
`Send` and `AttemptResult` are made on every try, so they are not frozen
(a frozen dataclass sets each field through object.__setattr__: ~0.4 µs more
per object); nothing changes them once made.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from proxyless_mesh.model import Endpoint
from proxyless_mesh.resilience._limits import SlotTicket


class FailureKind(enum.Enum):
    """Why an attempt produced no response (as the driver classifies it)."""

    CONNECT_FAILURE = "connect-failure"  # could not connect (refused, unreachable, TLS)
    RESET = "reset"  # connection closed or reset before a full response head
    TIMEOUT = "timeout"  # the Send's timeout fired
    REFUSED_STREAM = "refused-stream"  # HTTP/2 REFUSED_STREAM


@dataclass(slots=True)
class AttemptResult:
    """What one attempt gave: a response (status, header lookup, grpc status)
    or a failure. `headers` looks up lower-case names in the response head."""

    status: int | None = None
    headers: Callable[[str], str | None] | None = None
    grpc_status: int | None = None
    failure: FailureKind | None = None


@dataclass(slots=True)
class Send:
    """Send the request to `endpoint`, with `headers` set (replacing any of
    the same name), giving up after `timeout` seconds (None: no limit) and
    reporting `AttemptResult(failure=FailureKind.TIMEOUT)`."""

    endpoint: Endpoint
    timeout: float | None
    attempt: int  # 1-based
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait `seconds` (a fault delay or a retry backoff), then send None.
    A response the driver still holds is superseded: close it."""

    seconds: float


@dataclass(frozen=True, slots=True)
class WaitForSlot:
    """The request is pending on the cluster's limits: wait on `ticket`
    (`ticket.wait(timeout)` or `await ticket.wait_async(timeout)`), then send
    None. The engine checks the grant itself and may yield again."""

    ticket: SlotTicket
    timeout: float | None


@dataclass(frozen=True, slots=True)
class MeshFailure:
    """A failure the mesh reports instead of a response, with Envoy's
    response flag: UT (timeout), UO (overflow), UF (connect failure),
    UC (connection reset), UR (stream refused), UH (no healthy upstream).
    `timeout` is the limit that fired, for UT."""

    flag: str
    message: str
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Finish:
    """How the request ends; exactly one of these holds:
    - `use_last_response`: return the response of the last Send;
    - `error` is set: raise it (close any response still held);
    - `abort_status` / `abort_grpc_status` is set: answer with a synthetic
      response (fault injection): that HTTP status, or HTTP 200 carrying
      `grpc-status` for a gRPC abort.
    `flags` are every response flag collected (e.g. DI on a delayed success,
    UF and URX on exhausted connect failures); `notes` say why a retry did
    not happen when that is not obvious."""

    use_last_response: bool = False
    error: MeshFailure | None = None
    abort_status: int | None = None
    abort_grpc_status: int | None = None
    flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    attempts: int = 0


Command = Send | Sleep | WaitForSlot
