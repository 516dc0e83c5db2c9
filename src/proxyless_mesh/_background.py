"""A small bounded thread pool for work that must never slow a request:
mirrored copies are sent from here."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any


class Background:
    """A small thread pool that drops work instead of queueing without bound:
    mirrored copies must never pile up behind a slow mirror."""

    def __init__(self, *, max_workers: int, max_queued: int) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="proxyless-mesh-bg"
        )
        self._slots = threading.BoundedSemaphore(max_workers + max_queued)
        self.dropped = 0

    def submit(self, fn: Any, *args: Any) -> bool:
        if not self._slots.acquire(blocking=False):
            self.dropped += 1
            return False

        def run() -> None:
            try:
                fn(*args)
            finally:
                self._slots.release()

        try:
            self._pool.submit(run)
        except RuntimeError:  # shut down: the mesh is closing
            self._slots.release()
            return False
        return True

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
