"""A workload started while its control plane (and so its CA) is down, with
mTLS on, as the default bootstrap has it (issue 17). Real processes: a
`meshctl control-plane`, a backend, and warm_start_workload.py.

The control plane's xDS and CA ports are held by the test from the start
(processes.reserved_port: bound, not listening, so connections are refused as
with nothing there); the control plane binds them beside the holder when it
starts. No port is freed and guessed again.

(a) with a warm cache (config + workload certificate) the workload routes at
    once, never exits, and reconnects and renews its certificate when the
    control plane comes;
(b) with no cache it keeps asking, and starts soon after the CA is back,
    within its ready_timeout.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from meshlab import LocalMesh, Proc, start_process
from processes import reserved_port
from registration_plane import SERVICE_ENTRY, group, wait_for

from proxyless_mesh import Mesh, Registration
from proxyless_mesh.bootstrap import Bootstrap

HOST = "reviews.default.mesh"
URL = f"http://{HOST}:8080/"
WORKLOAD = Path(__file__).with_name("warm_start_workload.py")
READY_TIMEOUT = 30.0
GROUP = group("reviews", "reviews")


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    """The control plane's xDS and CA ports, held for the whole test."""
    with ExitStack() as stack:
        yield stack.enter_context(reserved_port()), stack.enter_context(reserved_port())


def _control_plane(lab: LocalMesh, ports: tuple[int, int]) -> Proc:
    xds, ca = ports
    return lab.start_control_plane(xds, extra_args=["--ca-address", f"127.0.0.1:{ca}"])


def _workload(lab: LocalMesh, bootstrap: Path, *, wait: bool) -> Proc:
    argv = [sys.executable, str(WORKLOAD), "--bootstrap", str(bootstrap), "--url", URL]
    proc = start_process(
        f"workload-{len(lab.procs)}",
        [*argv, "--ready-timeout", f"{READY_TIMEOUT:g}"],
        lab.workdir,
        timeout=READY_TIMEOUT + 10,
        wait=wait,
    )
    lab.procs.append(proc)
    return proc


def _lines(proc: Proc) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.log.read_text().splitlines() if line.startswith("{")]


def _await_output(proc: Proc, ok: Callable[[str], bool], what: str, timeout: float = 20.0) -> str:
    """Wait for the workload to print (or log) a line that satisfies `ok`;
    it must stay alive meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.popen.poll() is None, f"the workload exited:\n{proc.log.read_text()}"
        for line in proc.log.read_text().splitlines():
            if ok(line):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout}s:\n{proc.log.read_text()}")


def test_with_a_warm_cache_it_routes_at_once_and_reconnects(
    lab: LocalMesh, ports: tuple[int, int]
) -> None:
    backend = lab.start_http_backend("reviews", "v1")
    lab.deploy_versions(HOST, 8080, {"v1": backend}, {"v1": 100})
    cp = _control_plane(lab, ports)
    bootstrap = lab.bootstrap("warm-1", token=lab.token("default", "default"))

    first = _workload(lab, bootstrap, wait=True)  # fills both caches, then stops cleanly
    assert first.ready["connected"] and first.ready["version"] == "v1"
    assert first.stop() == 0
    cp.stop()  # the control plane and its CA go away; the test still holds both ports

    restarted = _workload(lab, bootstrap, wait=True)
    ready = restarted.ready
    print(f"warm start with the control plane down: {ready['started_after']:.3f}s")
    assert ready["started_after"] < 2.0  # not the ready_timeout (30 s)
    assert not ready["connected"] and ready["version"] == "v1"  # routed from the cache
    cached_serial = ready["cert_serial"]
    assert cached_serial is not None
    log = restarted.log.read_text()
    assert "starting with the cached workload certificate" in log
    assert log.count("WARNING cannot reach the control plane") == 1

    _control_plane(lab, ports)
    _await_output(restarted, lambda line: '"connected": true' in line, "reconnection")
    _await_output(
        restarted,
        lambda line: line.startswith("{") and json.loads(line)["cert_serial"] != cached_serial,
        "a certificate from the CA replacing the cached one",
    )
    lines = _lines(restarted)
    assert lines and all(line.get("version") == "v1" for line in lines), lines
    log = restarted.log.read_text()
    assert log.count("INFO control plane reachable again") == 1
    assert log.count("WARNING cannot reach the control plane") == 1
    assert restarted.popen.poll() is None


def test_with_no_cache_it_starts_once_the_ca_is_back(
    lab: LocalMesh, ports: tuple[int, int]
) -> None:
    backend = lab.start_http_backend("reviews", "v1")
    lab.deploy_versions(HOST, 8080, {"v1": backend}, {"v1": 100})
    xds, ca = ports
    bootstrap = lab.bootstrap(
        "cold-1",
        token=lab.token("default", "default"),
        xds_address=f"127.0.0.1:{xds}",
        ca_address=f"127.0.0.1:{ca}",
    )
    began = time.monotonic()
    workload = _workload(lab, bootstrap, wait=False)
    _await_output(workload, lambda line: "asking again until the CA answers" in line, "CA retry")
    # An outage of a few seconds: the workload must keep trying, not die.
    outage = 3.0
    time.sleep(max(0.0, began + outage - time.monotonic()))
    assert workload.popen.poll() is None
    _control_plane(lab, ports)
    back = time.monotonic()
    ready = workload.wait_ready(READY_TIMEOUT)
    after_ca = time.monotonic() - back
    total = ready["started_after"]
    print(f"cold start: ready {after_ca:.2f}s after the control plane, {total:.2f}s in all")
    assert ready["connected"] and ready["version"] == "v1" and ready["cert_serial"] is not None
    assert ready["started_after"] < READY_TIMEOUT
    assert after_ca < 10.0
    log = workload.log.read_text()
    assert log.count("asking again until the CA answers") == 1
    assert log.count("the CA at") >= 1 and "answered after" in log


def test_a_warm_started_workload_registers_when_the_control_plane_comes(
    lab: LocalMesh, ports: tuple[int, int]
) -> None:
    """`register=` waits for the control plane instead of being skipped. (The
    config cache holds client listeners only: `preload` gives it one.)"""
    lab.write_config("reviews.yaml", json.dumps(SERVICE_ENTRY) + "\n---\n" + json.dumps(GROUP))
    cp = _control_plane(lab, ports)
    bootstrap = Bootstrap.from_file(
        lab.bootstrap("reg-1", sa="reviews", token=lab.token("default", "reviews"))
    )

    def registration() -> Registration:
        return Registration(group="default/reviews", ports={"http": 9999}, drain_seconds=0)

    preload = ["reviews.default.svc:9080"]
    with Mesh(bootstrap, register=registration(), preload=preload) as mesh:  # warms the caches
        assert mesh.registrars[0].registered_ports == {"http": 9999}
    cp.stop()
    began = time.monotonic()
    with Mesh(
        bootstrap, register=registration(), preload=preload, ready_timeout=READY_TIMEOUT
    ) as mesh:
        assert time.monotonic() - began < 2.0 and not mesh.xds.connected
        (registrar,) = mesh.registrars
        assert registrar.registered_ports is None
        _control_plane(lab, ports)
        wait_for(lambda: registrar.registered_ports == {"http": 9999}, 20, "registration")
