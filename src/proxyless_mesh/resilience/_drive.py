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
from contextlib import closing

from proxyless_mesh.resilience._flow import Flow
from proxyless_mesh.resilience._types import (
    AttemptResult,
    Command,
    Finish,
    Send,
    Sleep,
    WaitForSlot,
)

Attempt = Callable[[Send], AttemptResult]
AsyncAttempt = Callable[[Send], Awaitable[AttemptResult]]


def _next(flow: Flow, reply: AttemptResult | None) -> Command | Finish:
    """The flow's next command, or its Finish once it has returned."""
    try:
        return flow.send(reply)
    except StopIteration as stop:
        finish: Finish = stop.value
        return finish


def drive(flow: Flow, attempt: Attempt, supersede: Callable[[], None]) -> Finish:
    """Run `flow` to its Finish, blocking the thread while it waits.

    `supersede()` runs before each command: the outcome of the try before
    it, if any, will not be the answer (a retry, a backoff or a wait follows),
    so the integration can release it (close a response)."""
    with closing(flow):
        reply = None
        while type(command := _next(flow, reply)) is not Finish:
            supersede()
            reply = attempt(command) if type(command) is Send else _wait(command)  # type: ignore[arg-type]
        return command  # type: ignore[return-value]


async def drive_async(
    flow: Flow, attempt: AsyncAttempt, supersede: Callable[[], Awaitable[None]]
) -> Finish:
    """`drive` for asyncio: the same commands, awaited instead of blocked on."""
    with closing(flow):
        reply = None
        while type(command := _next(flow, reply)) is not Finish:
            await supersede()
            send = type(command) is Send
            reply = await (attempt(command) if send else _wait_async(command))  # type: ignore[arg-type]
        return command  # type: ignore[return-value]


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
