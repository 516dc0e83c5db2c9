"""The README's "Five-minute tour" runs as written.

The tour's blocks are taken from README.md by their markers (`<!-- tour-file: NAME -->`
before a file's block, `<!-- tour-run: NAME -->` before a command's) and run in an
empty directory with the venv's `meshctl`, `python` and `gunicorn` first on PATH:
the control plane, the join tokens and bootstraps, the two backends (ASGI under
`serve_asgi`, WSGI under the gunicorn mesh worker), both frontends, `meshctl status`.

The one change made to the text: the fixed ports the tour names (15010/15012/15014,
9081/9082) become port 0, and the ports really bound (the control plane's ready
file, the servers' "running on"/"Listening at" lines) replace them in the blocks
that follow. For that, the ServiceEntry is written once the backends have bound
their ports (the control plane starts on an empty directory and reloads it).

What it proves: every tour block is working code (a drift breaks this test), the
files in examples/tour/ are the README's blocks, the frontend reaches both backends
over mTLS (v2 by header, the 80/20 split over 20 requests: v1 is missed with
probability 0.2**20), both backends see the frontend's SPIFFE ID, and the README's
`meshctl status` sample has the real output's columns and rows.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples" / "tour"
BIN = Path(sys.executable).parent
FRONTEND = "spiffe://cluster.local/ns/default/sa/frontend"
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"
BLOCK = re.compile(r"<!-- tour-(file|run|output): (\S+) -->\n```[^\n]*\n(.*?)```", re.S)
PORT_IN_LOG = {
    "uvicorn": re.compile(r"Uvicorn running on https?://127\.0\.0\.1:(\d+)"),
    "gunicorn": re.compile(r"Listening at: https?://127\.0\.0\.1:(\d+)"),
}
START_LIMIT = 30.0


def tour_blocks() -> tuple[dict[str, str], dict[str, str]]:
    """({file name: text}, {command or output name: text}) of the tour's blocks."""
    files: dict[str, str] = {}
    runs: dict[str, str] = {}
    for kind, name, body in BLOCK.findall(README.read_text()):
        (files if kind == "file" else runs)[name] = body
    return files, runs


def commands(block: str) -> list[str]:
    """The shell lines of a block, backslash continuations joined."""
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def substitute(text: str, ports: dict[int, int]) -> str:
    for tour_port, real in ports.items():
        text = re.sub(rf"([:=] ?){tour_port}\b", rf"\g<1>{real}", text)
    return text


class Tour:
    """The tour's directory and the processes started in it (all stopped on close)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        self.env.pop("GRPC_XDS_BOOTSTRAP", None)
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, command: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.dir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.dir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((proc, log))
        return proc, log

    def wait_for(self, what: str, proc: subprocess.Popen[bytes], log: Path, found: object) -> None:
        deadline = time.monotonic() + START_LIMIT
        while not callable(found) or not found():
            if proc.poll() is not None:
                pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} not ready after {START_LIMIT}s:\n{log.read_text()}")
            time.sleep(0.05)

    def bound_port(self, server: str, proc: subprocess.Popen[bytes], log: Path) -> int:
        port: list[int] = []

        def found() -> bool:
            match = PORT_IN_LOG[server].search(log.read_text())
            if match:
                port.append(int(match.group(1)))
            return bool(match)

        self.wait_for(server, proc, log, found)
        return port[0]

    def run(self, args: list[str], timeout: float = 60.0) -> str:
        done = subprocess.run(
            args, cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def close(self) -> None:
        for proc, _log in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _log in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def tour(tmp_path: Path) -> Iterator[Tour]:
    running = Tour(tmp_path)
    try:
        yield running
    finally:
        running.close()


def test_examples_are_the_readme_blocks() -> None:
    files, runs = tour_blocks()
    assert set(files) == {
        "mesh/reviews.yaml",
        "reviews_v1.py",
        "reviews_v2.py",
        "frontend.py",
        "frontend_async.py",
    }
    assert set(runs) == {"control-plane", "identities", "backends", "frontend.py", "status"}
    for name, body in files.items():
        assert (EXAMPLES / name).read_text() == body, f"README block {name} != examples/tour"


def test_the_tour_runs_as_written(tour: Tour) -> None:
    files, runs = tour_blocks()
    for name, body in files.items():
        if name != "mesh/reviews.yaml":  # written once the backends have ports
            (tour.dir / name).write_text(body)
    (tour.dir / "mesh").mkdir()

    # 2. The control plane, on ports the system picks.
    (control_plane,) = commands(runs["control-plane"])
    ready = tour.dir / "control-plane.ready.json"
    proc, log = tour.start(
        "control-plane",
        f"{substitute(control_plane, {15010: 0, 15012: 0, 15014: 0})} --ready-file {ready}",
    )
    tour.wait_for("control plane", proc, log, ready.exists)
    bound = json.loads(ready.read_text())
    ports = {15010: bound["xds"], 15012: bound["ca"], 15014: bound["admin"]}
    ports = {k: int(str(v).rpartition(":")[2]) for k, v in ports.items()}

    # 3. Tokens and bootstraps.
    tour.run(["bash", "-e", "-c", substitute(runs["identities"], ports)])
    for node in ("frontend", "reviews-v1", "reviews-v2"):
        assert "certificate_providers" in json.loads((tour.dir / f"{node}.json").read_text())

    # 4. The backends, each on port 0; then the ServiceEntry names their ports.
    v1_line, v2_line = commands(runs["backends"])
    (tour.dir / "reviews_v1.py").write_text(substitute(files["reviews_v1.py"], {9081: 0}))
    v1 = tour.start("reviews-v1", v1_line.rstrip(" &"))
    v2 = tour.start("reviews-v2", substitute(v2_line, {9082: 0}).rstrip(" &"))
    ports[9081] = tour.bound_port("uvicorn", *v1)
    ports[9082] = tour.bound_port("gunicorn", *v2)
    (tour.dir / "mesh" / "reviews.yaml").write_text(substitute(files["mesh/reviews.yaml"], ports))
    tour.wait_for("the ServiceEntry", proc, log, lambda: endpoints_served(tour, ports))
    # gunicorn says "Listening" before its worker's Mesh has started; the
    # route's 2 s timeout must not race that start.
    tour.wait_for("both backends' meshes", proc, log, lambda: backends_connected(tour, ports))

    # 5. The frontends.
    out = tour.run([str(BIN / "python"), "frontend.py"]).splitlines()
    shown = runs["frontend.py"].splitlines()
    assert shown[0] == "$ python frontend.py" and len(shown) == len(out) + 1, (shown, out)
    assert [shown[i + 1] for i in (0, 1, 3)] == [out[i] for i in (0, 1, 3)], (shown, out)
    assert shown[3].startswith("Counter({'v1': ") and out[2].startswith("Counter({"), out
    assert out[0] == FRONTEND, out
    assert ast.literal_eval(out[1]) == {"version": "v2", "caller": FRONTEND}, out
    split = ast.literal_eval(out[2].removeprefix("Counter(").removesuffix(")"))
    assert sum(split.values()) == 20 and split.get("v1", 0) > 0, out
    assert ast.literal_eval(out[3]) == {FRONTEND}, out
    reply = ast.literal_eval(tour.run([str(BIN / "python"), "frontend_async.py"]).strip())
    assert reply["caller"] == FRONTEND and reply["version"] in {"v1", "v2"}, reply

    # 7. `meshctl status` prints what the README shows, rows for the two backends.
    sample = runs["status"].splitlines()
    status = tour.run(substitute(sample[0].removeprefix("$ "), ports).split()).splitlines()
    assert status[0].startswith("config version: ") and sample[1].startswith("config version: ")
    assert status[1].split() == sample[2].split(), status  # the header row
    real_rows = {row.split()[0]: row.split() for row in status[2:]}
    for row in sample[3:]:
        cells = row.split()
        assert cells[:3] == real_rows[cells[0]][:3], (cells, status)
        assert len(cells) == len(real_rows[cells[0]]), (cells, status)
    assert {"reviews-v1", "reviews-v2"} <= set(real_rows), status


def endpoints_served(tour: Tour, ports: dict[int, int]) -> bool:
    """Whether the control plane serves the backends' endpoints (describe lists them)."""
    done = subprocess.run(
        [
            *(str(BIN / "meshctl"), "describe", "reviews.default.mesh"),
            *("--admin-address", f"127.0.0.1:{ports[15014]}"),
        ],
        env=tour.env,
        capture_output=True,
        text=True,
        timeout=10,
    )
    text = done.stdout
    return done.returncode == 0 and all(str(ports[p]) in text for p in (9081, 9082))


def backends_connected(tour: Tour, ports: dict[int, int]) -> bool:
    """Whether both backends' meshes hold an xDS stream (`meshctl status`)."""
    done = subprocess.run(
        [str(BIN / "meshctl"), "status", "--admin-address", f"127.0.0.1:{ports[15014]}"],
        env=tour.env,
        capture_output=True,
        text=True,
        timeout=10,
    )
    nodes = {line.split()[0] for line in done.stdout.splitlines()[2:] if line.strip()}
    return done.returncode == 0 and {"reviews-v1", "reviews-v2"} <= nodes
