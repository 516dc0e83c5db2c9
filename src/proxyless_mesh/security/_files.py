"""Private files: written atomically, mode 0600 from the first byte, in a 0700 dir.

"Atomically" matters twice: grpcio's `file_watcher` provider re-reads the files
on a timer and must never see half a key, and a crash mid-write must not leave
a truncated key behind. The mode is set at creation (O_CREAT with 0600), never
chmod-ed afterwards, so no other user can open the file in between.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["ensure_private_dir", "write_private_file"]


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700; tighten it if it exists
    looser, since it holds keys."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def write_private_file(path: Path, data: bytes) -> None:
    """Write `data` to a new 0600 file beside `path`, fsync, then rename over it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
