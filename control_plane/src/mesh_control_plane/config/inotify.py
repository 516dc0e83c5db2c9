"""Linux inotify through libc (ctypes): wake the config watcher the moment a file changes.

No dependency and no thread: the inotify descriptor is read by the event loop.
Where inotify is missing (not Linux, no libc symbol, the watch limit reached),
`DirectoryEvents.open` returns None and the watcher polls as before. Polling
stays on beside inotify at its interval: inotify does not see changes made on
another host of a network filesystem, nor in place through a symlinked file.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

__all__ = ["DirectoryEvents"]

logger = logging.getLogger(__name__)

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
WATCHED = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
# A new, moved or vanished directory changes the set of directories to watch.
REARM = IN_ISDIR | IN_IGNORED | IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF
EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            # the process's own symbols, libc's among them: no find_library,
            # which runs ldconfig in a subprocess
            libc = ctypes.CDLL(None, use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        except (OSError, AttributeError):
            return None
        _libc = libc
    return _libc


def watched_directories(root: Path) -> list[Path]:
    """`root` and the directories under it that the loader reads (not hidden, not
    symlinked). A ConfigMap volume's swap renames `..data` in the root itself."""
    found = [root]
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath, d) for d in dirnames)
    return found


class DirectoryEvents:
    """Tells the config watcher that something under a directory changed.

    It says only *that* something changed: the watcher compares its directory
    signature and debounces as before, so a missed or spurious event costs at
    most one poll interval or one cheap signature.
    """

    def __init__(self, libc: ctypes.CDLL, fd: int, root: Path) -> None:
        self._libc = libc
        self._fd = fd
        self._root = root
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._root_watched = False
        self.rearm()
        self._loop.add_reader(fd, self._drain)

    @classmethod
    def open(cls, root: Path) -> DirectoryEvents | None:
        """Watch `root`'s tree on the running loop, or None without inotify."""
        libc = _load_libc()
        if libc is None:
            return None
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            logger.info("inotify unavailable (%s): polling the config directory", _errno())
            return None
        return cls(libc, fd, root)

    def rearm(self) -> None:
        """Watch every directory the loader reads; already watched ones are kept."""
        self._root_watched = False
        try:
            directories = watched_directories(self._root) if self._root.is_dir() else []
        except OSError:
            directories = []
        for directory in directories:
            wd = self._libc.inotify_add_watch(
                self._fd, os.fsencode(directory), WATCHED | IN_ONLYDIR
            )
            if wd < 0:
                logger.debug("inotify cannot watch %s: %s", directory, _errno())
            elif directory == self._root:
                self._root_watched = True

    @property
    def watching(self) -> bool:
        """Whether the root directory itself is watched (else only polling sees it)."""
        return self._root_watched

    async def wait(self, timeout: float, sleep: Callable[[float], Awaitable[None]]) -> None:
        """Return on the next change, or after `sleep(timeout)`, whichever is first."""
        if not self._changed.is_set():
            changed = asyncio.ensure_future(self._changed.wait())
            timer = asyncio.ensure_future(sleep(timeout))
            try:
                await asyncio.wait({changed, timer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                timer.cancel()
        self._changed.clear()

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)

    def _drain(self) -> None:
        rearm = False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            offset = 0
            while offset + EVENT_HEADER.size <= len(data):
                _, mask, _, length = EVENT_HEADER.unpack_from(data, offset)
                rearm = rearm or bool(mask & REARM)
                offset += EVENT_HEADER.size + length
        if rearm:
            self.rearm()
        self._changed.set()


def _errno() -> str:
    return os.strerror(ctypes.get_errno())
