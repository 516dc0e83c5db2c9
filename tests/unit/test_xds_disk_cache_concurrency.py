"""Processes (and clients in one process) with the same node id share one
cache file: last writer wins, whole file. Writers hammer the same path while
a reader checks that every read is one writer's complete, valid file."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from test_xds_disk_cache import feed, good_config, make_cache, new_protocol

from proxyless_mesh.xds_client import ResourceType

WRITES = 40
HERE = Path(__file__).parent

_WRITER = """
import sys
sys.path[:0] = [{here!r}, {tests!r}]  # test_xds_disk_cache, and its wire_support
from pathlib import Path
from test_xds_disk_cache import feed, good_config, make_cache, new_protocol
path, base = Path(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()  # start together
for i in range({writes}):
    feed(new_protocol(), make_cache(path), *good_config(port=base + i))
"""


def written_port(path: Path) -> int | None:
    """The endpoint port of the file's cached config (0: none yet); None if
    the file is unreadable, torn or fails its checksum."""
    cached = make_cache(path).load()
    if cached is None:
        return None
    assignment = cached.decoded()[ResourceType.CLUSTER_LOAD_ASSIGNMENT].get("svc1")
    if assignment is None:
        return 0  # a valid file from a write made before the endpoints arrived
    return assignment.localities[0].endpoints[0].port


def read_while(
    path: Path, alive: threading.Event | None, procs: list[subprocess.Popen[str]]
) -> set[int]:
    """Read until the writers are done; every read must be valid."""
    seen: set[int] = set()
    while (alive is not None and alive.is_set()) or any(p.poll() is None for p in procs):
        if not path.exists():
            continue  # before the first rename
        port = written_port(path)
        assert port is not None, "a reader saw a torn, mixed or missing cache file"
        seen.add(port)
    return seen


def ranges(*bases: int) -> set[int]:
    return {b + i for b in bases for i in range(WRITES)}


def test_two_processes_writing_one_path_never_corrupt_it(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "xds.cache"
    script = _WRITER.format(here=str(HERE), tests=str(HERE.parent), writes=WRITES)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path), str(base)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for base in (10_000, 20_000)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        seen = read_while(path, None, procs)
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert seen - {0} <= ranges(10_000, 20_000)
    assert written_port(path) in {10_000 + WRITES - 1, 20_000 + WRITES - 1}  # a last write
    assert not list(path.parent.glob("*.tmp"))  # no temporary file left behind


def test_two_clients_in_one_process_never_corrupt_it(tmp_path: Path) -> None:
    path = tmp_path / "xds.cache"
    alive = threading.Event()
    alive.set()
    errors: list[BaseException] = []

    def write(base: int) -> None:
        try:
            for i in range(WRITES):
                feed(new_protocol(), make_cache(path), *good_config(port=base + i))
        except BaseException as exc:  # reported by the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(b,)) for b in (30_000, 40_000)]
    for t in threads:
        t.start()

    def finish() -> None:
        for t in threads:
            t.join()
        alive.clear()

    finisher = threading.Thread(target=finish)
    finisher.start()
    try:
        seen = read_while(path, alive, [])
    finally:
        finisher.join()
    assert not errors, errors
    assert seen - {0} <= ranges(30_000, 40_000)
    assert not list(path.parent.glob("*.tmp"))
