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

from proxyless_mesh.resilience._flow import Flow
from proxyless_mesh.resilience._types import AttemptResult, Finish, Send, Sleep

Attempt = Callable[[Send], AttemptResult]
AsyncAttempt = Callable[[Send], Awaitable[AttemptResult]]


def drive(flow: Flow, attempt: Attempt, supersede: Callable[[], None] | None = None) -> Finish:
    """Run `flow` to its Finish, blocking the thread while it waits.

    `supersede()` runs before each command: the outcome of the try before
    it, if any, will not be the answer (a retry, a backoff or a wait follows),
    so the integration can release it (close a response)."""
    reply: AttemptResult | None = None
    try:
        while True:
            try:
                command = flow.send(reply)
            except StopIteration as stop:
                finish: Finish = stop.value
                return finish
            if supersede is not None:
                supersede()
            if type(command) is Send:
                reply = attempt(command)
            elif type(command) is Sleep:
                time.sleep(command.seconds)
                reply = None
            else:
                command.ticket.wait(command.timeout)  # type: ignore[union-attr]
                reply = None
    finally:
        flow.close()


async def drive_async(
    flow: Flow,
    attempt: AsyncAttempt,
    supersede: Callable[[], Awaitable[None]] | None = None,
) -> Finish:
    """`drive` for asyncio: the same commands, awaited instead of blocked on."""
    reply: AttemptResult | None = None
    try:
        while True:
            try:
                command = flow.send(reply)
            except StopIteration as stop:
                finish: Finish = stop.value
                return finish
            if supersede is not None:
                await supersede()
            if type(command) is Send:
                reply = await attempt(command)
            elif type(command) is Sleep:
                await asyncio.sleep(command.seconds)
                reply = None
            else:
                await command.ticket.wait_async(command.timeout)  # type: ignore[union-attr]
                reply = None
    finally:
        flow.close()
