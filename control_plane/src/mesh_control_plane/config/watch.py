"""Follow a config directory: reload when it changes, keep the last good config.

On Linux, inotify wakes the watcher the moment a file is written (see
`inotify.py`). Polling stays underneath, once a second, for what inotify does
not see (network filesystems, in-place edits through a symlinked file), and
alone at its interval (100 ms) where there is no inotify: it works the same on
every OS and on Kubernetes ConfigMap volumes (which swap a symlinked directory).
Its stats of every file showed as 1-2 % of the CPU of a connect storm at 10 a
second, hence the slower backstop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from .documents import Document
from .errors import ConfigLoadError, ConfigProblem
from .inotify import DirectoryEvents
from .loader import config_files, load_config_dir
from .model import MeshConfig, MeshSettings, ServiceEntry
from .parsed_files import ParsedFiles

__all__ = ["ConfigWatcher", "directory_signature"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

BACKSTOP_POLL_INTERVAL = 1.0
"""Seconds between polls while inotify watches the directory."""

Signature = tuple[tuple[str, int, int, int, int], ...]


def directory_signature(root: Path) -> Signature:
    """A cheap fingerprint of the config files: name, mtime, ctime, size, inode.

    The inode catches editors and ConfigMaps that replace a file by renaming a
    new one over it within one mtime tick; a vanished file simply drops out.
    """
    entries = []
    try:
        files = config_files(root)
    except OSError:
        return ()
    for path in files:
        try:
            st = path.stat()  # follows symlinks, as the loader's read does
        except OSError:
            continue
        rel = path.relative_to(root).as_posix()
        entries.append((rel, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
    return tuple(entries)


class ConfigWatcher:
    """Loads `path` now and again after every change, telling the callbacks.

    Use either `await watcher.run()` in a task you own (it runs until
    cancelled), or `watcher.start()` and later `await watcher.stop()`.

    A change is acted on once the directory's signature has stayed the same
    for `debounce` seconds, so a multi-file edit or a `cp -r` is loaded once
    and not half-way (a change seen by inotify restarts the window too). A load
    that succeeds calls `on_config` only when the result differs from
    `last_good`; one that fails calls `on_error` and leaves `last_good` as it
    was, so a typo never takes routes away from the mesh.
    Callbacks run on the event loop; the load itself runs in a worker thread.
    """

    def __init__(
        self,
        path: Path,
        on_config: Callable[[MeshConfig], None],
        on_error: Callable[[ConfigLoadError], None],
        *,
        poll_interval: float = 0.1,
        debounce: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        settings: MeshSettings | None = None,
        extra: Callable[[], Iterable[Document]] = tuple,
        known: Callable[[], Sequence[ServiceEntry]] = tuple,
        inotify: bool = True,
    ) -> None:
        """`settings` (trust domain, root namespace: control-plane flags) go
        into every loaded MeshConfig; `extra()` gives documents loaded after the
        directory's (Kubernetes custom resources; the files win), `known()` the
        services registries declare (see `load_config_dir`). `inotify=False`
        leaves only polling (for tests of the polling path)."""
        self.path = Path(path)
        self._settings = settings or MeshSettings()
        self._extra = extra
        self._known = known
        self._on_config = on_config
        self._on_error = on_error
        self._poll_interval = poll_interval
        self._debounce = debounce
        self._clock = clock
        self._sleep = sleep
        self._last_good: MeshConfig | None = None
        self._parsed = ParsedFiles()  # unchanged files are not parsed again
        self._last_errors: tuple[ConfigProblem, ...] = ()
        self._task: asyncio.Task[None] | None = None
        self._inotify = inotify
        self._events: DirectoryEvents | None = None

    @property
    def last_good(self) -> MeshConfig | None:
        """The newest configuration that loaded without problems."""
        return self._last_good

    @property
    def notified(self) -> bool:
        """Whether inotify watches the directory now (else only polling sees changes)."""
        return self._events is not None and self._events.watching

    @property
    def last_errors(self) -> tuple[ConfigProblem, ...]:
        """The problems of the newest load; empty once a load succeeds."""
        return self._last_errors

    def start(self) -> asyncio.Task[None]:
        """Run the watcher in a task of the running loop (see `stop`)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="config-watcher")
        return self._task

    async def stop(self) -> None:
        """Cancel the task made by `start` and wait for it to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # wait() rather than `await task`: the task's CancelledError is expected and
        # must not be confused with a cancellation of our own caller.
        await asyncio.wait([task])
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure

    async def run(self) -> None:
        """Load once, then follow changes until cancelled."""
        seen = directory_signature(self.path)
        self._events = DirectoryEvents.open(self.path) if self._inotify else None
        try:
            await self.reload()
            changed_at: float | None = None
            while True:
                # While a change settles, look again after the debounce window
                # rather than a whole poll interval: it saves up to one interval
                # of propagation delay.
                await self._wait(self._debounce if changed_at is not None else self._idle_poll())
                signature = directory_signature(self.path)
                if signature != seen:
                    seen, changed_at = signature, self._clock()
                elif changed_at is not None and self._clock() - changed_at >= self._debounce:
                    changed_at = None
                    await self.reload()
        finally:
            events, self._events = self._events, None
            if events is not None:
                events.close()

    def _idle_poll(self) -> float:
        """With inotify watching, polling is only the backstop (network
        filesystems, files edited in place through a symlink): once a second,
        not the stat of every file ten times a second."""
        if self.notified:
            return max(self._poll_interval, BACKSTOP_POLL_INTERVAL)
        return self._poll_interval

    async def _wait(self, timeout: float) -> None:
        events = self._events
        if events is None:
            await self._sleep(timeout)
            return
        if not events.watching:  # the directory (re)appeared since: watch it now
            events.rearm()
        await events.wait(timeout, self._sleep)

    async def reload(self) -> bool:
        """Load the directory now (as on a change) and tell the callbacks.

        For callers that know better than polling, e.g. a SIGHUP handler.
        Returns whether the load succeeded.
        """
        try:
            config = await asyncio.to_thread(
                load_config_dir,
                self.path,
                self._settings,
                tuple(self._extra()),
                self._known(),
                self._parsed,
            )
        except ConfigLoadError as err:
            self._last_errors = err.problems
            logger.warning("%s; keeping the last good configuration", err)
            self._notify(self._on_error, err)
            return False
        # A failed load reverted to the last good config is reported again: the
        # callbacks learn that the problems are gone.
        recovered, self._last_errors = bool(self._last_errors), ()
        if config != self._last_good or recovered:
            self._last_good = config
            self._notify(self._on_config, config)
        return True

    @staticmethod
    def _notify(callback: Callable[[T], None], value: T) -> None:
        try:
            callback(value)
        except Exception:
            # Stated reason: a failing subscriber must not stop the watching that every
            # later configuration depends on; it is logged with its traceback instead.
            logger.exception("config watcher callback %r failed", callback)
