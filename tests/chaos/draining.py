"""Chaos scenario: rolling restart of self-registering backends, DRAINING first.

The YAML-based rolling restart (scenarios.rolling_restart) removes an instance
from a STATIC ServiceEntry: the client never sees DRAINING. Here no endpoint
is written anywhere: every backend joins with `Mesh(register=Registration(...))`
(tests/integration/registering_backend.py, a WorkloadGroup from
`--workload-groups-dir`). Each backend in turn: a replacement starts and
registers, then the old one gets SIGTERM, which deregisters it (DRAINING in
EDS), waits its drain time while still answering, and exits; the control plane
then drops it. The scenario checks that the client itself saw every old
endpoint DRAINING before it disappeared, and the table counts every request.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import HOST, PORT, Result, ScenarioCheckFailed, endpoint_health, measured
from meshlab import LocalMesh, Proc, start_process
from replicas import wait_until

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.model import HealthStatus

SCRIPT = Path(__file__).resolve().parents[1] / "integration" / "registering_backend.py"
GROUP = "chaos"
DRAIN = "0.5"  # seconds a stopping backend keeps answering after it deregisters


def registry_config(lab: LocalMesh) -> Path:
    """The ServiceEntry selects the group's workloads; returns the groups dir."""
    lab.write_config(
        "chaos.yaml",
        json.dumps(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "ServiceEntry",
                "metadata": {"name": "chaos", "namespace": "default"},
                "spec": {
                    "location": "MESH_INTERNAL",
                    "hosts": [HOST],
                    "ports": [{"number": PORT, "name": "http", "protocol": "HTTP"}],
                    "resolution": "STATIC",
                    "workloadSelector": {"labels": {"app": GROUP}},
                },
            }
        ),
    )
    groups = lab.workdir / "groups"
    groups.mkdir(exist_ok=True)
    (groups / "chaos.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "WorkloadGroup",
                "metadata": {"name": GROUP, "namespace": "default"},
                "spec": {
                    "metadata": {"labels": {"app": GROUP}},
                    "template": {"serviceAccount": GROUP, "ports": {"http": PORT}},
                },
            }
        )
    )
    return groups


class Workloads:
    """Registering backends, each with its own node id (and so cache file)."""

    def __init__(self, lab: LocalMesh) -> None:
        self.lab = lab
        self._base = json.loads(
            Bootstrap.from_file(
                lab.bootstrap("chaos-be", "default", GROUP, token=lab.token("default", GROUP))
            ).to_json()
        )
        self._started = 0
        self._lock = threading.Lock()

    def start(self) -> Proc:
        with self._lock:
            name = f"chaos-be-{self._started}"
            self._started += 1
        path = self.lab.workdir / f"bootstrap-{name}.json"
        path.write_text(json.dumps({**self._base, "node": {**self._base["node"], "id": name}}))
        argv = [sys.executable, str(SCRIPT), "--bootstrap", str(path)]
        argv += ["--group", f"default/{GROUP}", "--service", "chaos", "--version", "v1"]
        proc = start_process(name, [*argv, "--drain", DRAIN], self.lab.workdir)
        if "port" not in proc.ready:
            raise ScenarioCheckFailed(f"{name} was refused: {proc.ready}")
        self.lab.procs.append(proc)
        return proc


def accepts(port: int) -> bool:
    """Whether something still accepts TCP connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def stop_gracefully(lab: LocalMesh, mesh: Mesh, proc: Proc) -> list[HealthStatus]:
    """SIGTERM `proc` and follow its endpoint in the client until it is gone;
    returns the distinct health states the client saw, in order."""
    port: int = proc.ready["port"]
    seen: list[HealthStatus] = []
    proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    while (health := endpoint_health(mesh).get(port)) is not None:
        if not seen or seen[-1] is not health:
            seen.append(health)
            if health is HealthStatus.DRAINING and not accepts(port):
                # Zero failures would then be the retries' merit, not draining's.
                raise ScenarioCheckFailed(f"{proc.name} stopped serving before it drained")
        if time.monotonic() > deadline:
            raise ScenarioCheckFailed(f"port {port} still in the client's EDS: {seen}")
        time.sleep(0.005)
    try:
        code = proc.popen.wait(15)  # no second signal: it is on its way out already
    except subprocess.TimeoutExpired:
        code = proc.stop()
    if code != 0:
        log = proc.log.read_text()
        raise ScenarioCheckFailed(f"{proc.name} did not exit cleanly ({code}):\n{log}")
    lab.procs.remove(proc)
    return seen


def draining_rolling_restart(
    lab: LocalMesh, rate: float, hold: float, results: list[Result]
) -> None:
    groups = registry_config(lab)
    lab.start_control_plane(
        extra_args=["--workload-groups-dir", str(groups), "--registration-grace", "1s"]
    )
    workloads = Workloads(lab)
    with ThreadPoolExecutor(3) as pool:  # independent processes: start them together
        backends = list(pool.map(lambda _: workloads.start(), range(3)))
    with Mesh(
        Bootstrap.from_file(lab.bootstrap("chaos-client")), preload=[f"{HOST}:{PORT}"]
    ) as mesh:

        def healthy() -> set[int]:
            return {p for p, h in endpoint_health(mesh).items() if h is HealthStatus.HEALTHY}

        wait_until(lambda: healthy() == {b.ready["port"] for b in backends}, 15, "3 registered")
        with measured("rolling restart (DRAINING, EDS)", mesh, rate, hold, results):
            for old in list(backends):
                new = workloads.start()
                port: int = new.ready["port"]
                wait_until(lambda: port in healthy(), 15, "the replacement")  # noqa: B023
                seen = stop_gracefully(lab, mesh, old)
                if HealthStatus.DRAINING not in seen:
                    raise ScenarioCheckFailed(f"{old.name} never DRAINING in the client: {seen}")
                backends[backends.index(old)] = new
                time.sleep(hold / 3)
    for proc in backends:  # all drain at once instead of one after another in lab.close()
        proc.popen.send_signal(signal.SIGTERM)
