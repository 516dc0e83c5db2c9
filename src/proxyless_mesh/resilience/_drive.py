"""The two drivers of `request_flow`: one for threads, one for asyncio.

Every integration (httpx sync and async, gRPC sync and aio) runs its tries
through these, so what a flow's commands mean is written once: `Send` is
one try (the integration's `attempt`), `Sleep` a backoff, `WaitForSlot` a
place in the cluster's queue. The two differ only in how they wait. What a
try is, and how its per-try timeout bounds it, is the integration's part.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from proxyless_mesh.resilience._flow import FirstTry, Flow
from proxyless_mesh.resilience._types import (
    AttemptResult,
    Finish,
    Send,
    Sleep,
    WaitForSlot,
)

Attempt = Callable[[Send], AttemptResult]
AsyncAttempt = Callable[[Send], Awaitable[AttemptResult]]


def _escaped() -> RuntimeError:
    """A StopIteration that carries no Finish escaped from a try, not from the
    flow: a bug to surface, not an outcome."""
    return RuntimeError("a StopIteration escaped from a try, not from the flow")


def drive(flow: Flow, attempt: Attempt, supersede: Callable[[], None]) -> Finish:
    """Run `flow` to its Finish, blocking the thread while it waits.

    `attempt(send)` makes one try; before a retry it releases the previous
    try's outcome itself (close a response). `supersede()` does that before a
    backoff or a wait, so nothing is held while the flow waits."""
    send = flow.send
    try:
        command = send(None)  # the flow's StopIteration carries the Finish
        if type(flow) is FirstTry and type(command) is Send:  # the common case, no exception
            after = flow.answered(attempt(command))
            if type(after) is Finish:
                return after
            command = after  # type: ignore[assignment]
        while True:
            if type(command) is Send:
                reply = attempt(command)
            else:
                supersede()
                reply = _wait(command)  # type: ignore[arg-type,assignment]
            command = send(reply)
    except StopIteration as stop:
        if type(finish := stop.value) is not Finish:  # checked inline: once per request
            raise _escaped() from stop
        return finish  # type: ignore[no-any-return]
    finally:
        flow.close()


async def drive_async(
    flow: Flow, attempt: AsyncAttempt, supersede: Callable[[], Awaitable[None] | None]
) -> Finish:
    """`drive` for asyncio: the same commands, awaited instead of blocked on.
    `supersede()` returns what to await for the release, or None."""
    send = flow.send
    try:
        command = send(None)
        if type(flow) is FirstTry and type(command) is Send:
            after = flow.answered(await attempt(command))
            if type(after) is Finish:
                return after
            command = after  # type: ignore[assignment]
        while True:
            if type(command) is not Send:
                if (releasing := supersede()) is not None:
                    await releasing
                reply = await _wait_async(command)  # type: ignore[arg-type]
            else:
                reply = await attempt(command)
            command = send(reply)
    except StopIteration as stop:
        if type(finish := stop.value) is not Finish:
            raise _escaped() from stop
        return finish  # type: ignore[no-any-return]
    finally:
        flow.close()


def _wait(command: Sleep | WaitForSlot) -> AttemptResult | None:
    """Sleep a backoff or wait for a slot; the flow's reply is None."""
    if type(command) is Sleep:
        time.sleep(command.seconds)
    else:
        command.ticket.wait(command.timeout)  # type: ignore[union-attr]
    return None


async def _wait_async(command: Sleep | WaitForSlot) -> AttemptResult | None:
    if type(command) is Sleep:
        await asyncio.sleep(command.seconds)
    else:
        await command.ticket.wait_async(command.timeout)  # type: ignore[union-attr]
    return None
