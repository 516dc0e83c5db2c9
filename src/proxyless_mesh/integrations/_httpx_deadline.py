"""The per-try timeout of an httpx try, body included.

httpx's own timeouts bound each I/O phase (connect, write, each read), not a
whole response, and a transport returns once the head has arrived: the body
is read later by the caller. A try with a timeout therefore gets a deadline
that also covers its body:
- async: each body read runs under `asyncio.timeout_at(deadline)`;
- sync: a blocking read cannot be cancelled, so one watchdog thread shuts
  the connection's socket down at the deadline (`network_stream`, httpx's
  documented response extension), which ends the read at once.
Either way the caller's read raises UpstreamTimeoutError (flag UT). The head
was already answered, so nothing is retried then. Envoy differs here: it
stops a try's timer once the response has started downstream and lets only
the route timeout bound the rest; the mesh bounds the body by the per-try
timeout so that a try that stalls mid-body fails in the time it promised.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from proxyless_mesh.errors import UpstreamTimeoutError


def body_timeout(request: httpx.Request, limit: float) -> UpstreamTimeoutError:
    """The error a caller's body read raises when the try's time ran out."""
    error = UpstreamTimeoutError(
        f"per-try timeout of {limit:g}s passed while reading the response body "
        f"from {request.url.host}:{request.url.port}",
        request=request,
    )
    error.flags = ("UT",)
    return error


class _Watchdog:
    """Runs callbacks at deadlines on one daemon thread (a heap of timers).
    An entry is cancelled by clearing its callback; arming costs a lock and a
    heap push, no thread per try."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[list[Any]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def forget(self) -> None:
        """After a fork: the thread did not survive it, nor do the timers."""
        self._cond = threading.Condition()
        self._heap = []
        self._thread = None

    def arm(self, deadline: float, callback: Callable[[], None]) -> list[Any]:
        entry = [deadline, next(self._order), callback]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mesh-try-deadlines", daemon=True
                )
                self._thread.start()
            if self._heap[0] is entry:
                self._cond.notify()
        return entry

    def _run(self) -> None:
        with self._cond:
            while True:
                heap = self._heap
                while heap and heap[0][2] is None:
                    heapq.heappop(heap)
                if not heap:
                    self._cond.wait()
                    continue
                delay = heap[0][0] - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                entry = heapq.heappop(heap)
                callback, entry[2] = entry[2], None
                self._cond.release()
                try:
                    callback()
                finally:
                    self._cond.acquire()


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG.forget)


class SyncBoundedBody(httpx.SyncByteStream):
    """A sync response body that must be read by `deadline` (monotonic)."""

    def __init__(
        self,
        inner: httpx.SyncByteStream,
        network_stream: Any,
        deadline: float,
        error: Callable[[], UpstreamTimeoutError],
    ) -> None:
        self._inner = inner
        self._network_stream = network_stream
        self._deadline = deadline
        self._error = error
        self._expired = False
        self._entry: list[Any] | None = _WATCHDOG.arm(deadline, self._expire)

    def _expire(self) -> None:
        self._expired = True
        stream = self._network_stream
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            # socket.socket's shutdown, also for an SSLSocket: wakes the reader.
            # Already closed (OSError): the read has ended anyway.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _disarm(self) -> None:
        if self._entry is not None:
            self._entry[2] = None
            self._entry = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                if self._expired or time.monotonic() > self._deadline:
                    raise self._error()
                yield chunk
        except httpx.TransportError as exc:
            if self._expired and not isinstance(exc, UpstreamTimeoutError):
                raise self._error() from exc
            raise
        finally:
            self._disarm()

    def close(self) -> None:
        self._disarm()
        self._inner.close()


class AsyncBoundedBody(httpx.AsyncByteStream):
    """An async response body that must be read by `deadline` (loop time)."""

    def __init__(
        self,
        inner: httpx.AsyncByteStream,
        deadline: float,
        error: Callable[[], UpstreamTimeoutError],
    ) -> None:
        self._inner = inner
        self._deadline = deadline
        self._error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._inner.__aiter__()
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise self._error() from exc
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
