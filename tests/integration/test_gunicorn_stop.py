"""`gunicorn -k proxyless_mesh.gunicorn.MeshSyncWorker app:app` stops promptly
on SIGTERM (issue 17). The worker drains on a thread; it used to set `alive =
False` without waking gunicorn's loop, which slept in select() for half of
gunicorn's `timeout` (15 s by default) before noticing: ~17 s per stop. With
nothing registered there is nothing to drain: the whole gunicorn (arbiter and
worker, mesh closed) must be gone within STOP_BOUND."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshlab import LocalMesh
from registration_plane import Plane, serve_plane, start_backend

HERE = Path(__file__).resolve().parent
GUNICORN = Path(sys.executable).with_name("gunicorn")
STOP_BOUND = 3.0  # seconds from SIGTERM to exit, gunicorn's default timeout being 30 s
DRAIN = 1.0  # Registration's default drain_seconds

CONFIG = """
import json, os
bind = "127.0.0.1:0"
workers = 1
loglevel = "info"

def post_worker_init(worker):
    tmp = {ready!r} + ".tmp"
    with open(tmp, "w") as f:
        json.dump({{"pid": os.getpid(), "port": worker.sockets[0].getsockname()[1]}}, f)
    os.replace(tmp, {ready!r})
"""


@pytest.mark.skipif(not GUNICORN.exists(), reason="gunicorn is not installed in this venv")
def test_sigterm_stops_gunicorn_at_once_with_nothing_registered(lab: LocalMesh) -> None:
    lab.start_control_plane()
    bootstrap = lab.bootstrap("gunicorn-1", token=lab.token("default", "default"))
    ready = lab.workdir / "gunicorn.ready.json"
    config = lab.workdir / "gunicorn.conf.py"
    config.write_text(CONFIG.format(ready=str(ready)))
    log = (lab.workdir / "gunicorn.log").open("wb")
    argv = [str(GUNICORN), "-k", "proxyless_mesh.gunicorn.MeshSyncWorker", "-c", str(config)]
    proc = subprocess.Popen(
        [*argv, "--chdir", str(HERE), "plain_wsgi_app:app"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap)},
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, (lab.workdir / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, (lab.workdir / "gunicorn.log").read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = proc.wait(60)
        took = time.monotonic() - sent
        print(f"gunicorn stopped {took:.2f}s after SIGTERM")
        assert code == 0, (lab.workdir / "gunicorn.log").read_text()
        assert took < STOP_BOUND, (lab.workdir / "gunicorn.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def plane(lab: LocalMesh) -> Iterator[Plane]:
    yield from serve_plane(lab, Plane.with_groups_dir(lab.workdir))


@pytest.mark.skipif(not GUNICORN.exists(), reason="gunicorn is not installed in this venv")
def test_sigterm_stops_a_registered_worker_within_its_drain_time(
    lab: LocalMesh, plane: Plane
) -> None:
    """Registered (the bootstrap's WorkloadGroup, drain 1 s): deregistered and
    drained first, then gone within DRAIN + STOP_BOUND of the SIGTERM."""
    proc = start_backend(
        lab,
        plane,
        HERE / "gunicorn_announcing_backend.py",
        "reviews-g",
        *("--group", "default/reviews", "--version", "v1"),
    )
    sent = time.monotonic()
    code = proc.stop(signal.SIGTERM, timeout=60)
    took = time.monotonic() - sent
    print(f"registered gunicorn stopped {took:.2f}s after SIGTERM")
    assert code == 0, proc.log.read_text()
    assert DRAIN <= took < DRAIN + STOP_BOUND, proc.log.read_text()
