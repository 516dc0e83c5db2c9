"""The data-path rows: one registry, so a new feature is one more entry.

A row names a client path and knows how to start it against the shared
servers (`Setup`): a load worker process (load_worker.py) and any sidecar
processes whose CPU and memory count for the row. A row whose feature does
not exist yet is listed with `missing` set: the tables show it as not
measured and say why, so the gap is visible until someone fills it in.

To add a row: write a start function returning `Running` and append a `Row`
to ROWS (sections: http, grpc, resilience, mtls). The first row of a section
is its baseline; added latency and ratios are against it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import cpu_seconds, rss_kb
from meshlab import BIN, LocalMesh, Proc
from sidecars import ENVOY, start_sidecar_pair

HERE = Path(__file__).resolve().parent
HTTP_PATH = "/bytes/1024"


@dataclass(frozen=True)
class Setup:
    """What every row may use: the running lab and the shared 1 KB servers."""

    lab: LocalMesh
    http_port: int
    grpc_port: int
    http_authority: str  # the mesh name of the HTTP server, "host:port"
    grpc_authority: str  # the mesh name of the gRPC server, "host:port"
    mesh_bootstrap: Path  # for our library (node user agent proxyless-mesh)
    grpc_bootstrap: Path  # for grpcio's native xDS (its own process, its own node id)
    mtls_authority: str  # the mesh name of the mTLS (STRICT) HTTP server
    mesh_mtls_bootstrap: Path  # with the CA address and a join token (sa/bench-client)
    outage_port: int  # the server answering 503 (GET /count: requests it saw)


class Worker:
    """A load_worker.py process: send a command, get its measurement."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self._log = open(workdir / f"worker-{name.replace(' ', '_')}.log", "w")  # noqa: SIM115
        self.popen = subprocess.Popen(
            [sys.executable, str(HERE / "load_worker.py"), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, **env},
        )
        self.started: dict[str, Any] | None = None

    def wait_ready(self) -> None:
        """Its ready line. Separate from starting, so all rows' workers start
        (import, connect, fetch their config) at once."""
        if self.started is None:
            self.started = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.popen.stdout.readline() if self.popen.stdout is not None else ""
        if not line:
            self.close()
            raise RuntimeError(
                f"worker {self.name!r} exited: {Path(self._log.name).read_text()[-2000:]}"
            )
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, command: dict[str, Any]) -> dict[str, Any]:
        self.wait_ready()
        if self.popen.stdin is None:
            raise RuntimeError("worker has no stdin")
        self.popen.stdin.write(json.dumps(command) + "\n")
        self.popen.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.popen.poll() is None:
            try:
                if self.popen.stdin is not None:
                    self.popen.stdin.write('{"op": "quit"}\n')
                    self.popen.stdin.close()
                self.popen.wait(10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.popen.kill()
                self.popen.wait()
        self._log.close()


@dataclass
class Running:
    """A started row: its client worker and the extra processes it pays for."""

    worker: Worker
    side_pids: list[int] = field(default_factory=list)

    def side_cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.side_pids)

    def side_rss_kb(self) -> int:
        return sum(rss_kb(pid) for pid in self.side_pids)


@dataclass(frozen=True)
class Row:
    section: str  # "http", "grpc", "resilience" or "mtls"
    name: str
    start: Callable[[Setup], Running] | None
    missing: str = ""  # why it cannot be measured yet (start is None)


def _http_worker(setup: Setup, name: str, url: str, *extra: str) -> Worker:
    return Worker(name, ["--kind", "http", "--target", url, *extra], setup.lab.workdir, {})


def plain_httpx(setup: Setup) -> Running:
    url = f"http://127.0.0.1:{setup.http_port}{HTTP_PATH}"
    return Running(_http_worker(setup, "plain httpx", url))


def own_bootstrap(setup: Setup, node: str, mtls: bool) -> Path:
    """A bootstrap (node id) per row, as every workload has its own: rows that
    shared one would also share the library's on-disk xDS cache, keyed by
    node id, and start from another row's config. mTLS rows share one
    identity (sa/bench-client): a join token may be used more than once."""
    base = setup.mesh_mtls_bootstrap if mtls else setup.mesh_bootstrap
    document = json.loads(base.read_text())
    document["node"]["id"] = node  # a copy, not `meshctl bootstrap`: a process start less
    path = base.with_name(f"bootstrap-{node}.json")
    path.write_text(json.dumps(document))
    path.chmod(0o600)  # it may carry a join token
    return path


def mesh_plaintext(setup: Setup) -> Running:
    url = f"http://{setup.http_authority}{HTTP_PATH}"
    bootstrap = ["--mesh-bootstrap", str(own_bootstrap(setup, "row-mesh-plain", False))]
    return Running(_http_worker(setup, "mesh plaintext", url, *bootstrap))


def mesh_mtls(setup: Setup) -> Running:
    """Both sides meshed: the client's identity from its bootstrap's token,
    upstream mTLS from the cluster's xDS (auto mTLS), the server STRICT."""
    url = f"http://{setup.mtls_authority}{HTTP_PATH}"
    bootstrap = ["--mesh-bootstrap", str(own_bootstrap(setup, "row-mesh-mtls", True))]
    return Running(_http_worker(setup, "mesh mtls", url, *bootstrap))


def _mesh_row(authority: str, mtls: bool, new_connection: bool) -> Callable[[Setup], Running]:
    """A mesh-transport client of `authority` (or, when mTLS, the mTLS server)."""

    def start(setup: Setup) -> Running:
        target = setup.mtls_authority if mtls else authority
        name = f"mesh {target} tls={mtls} new={new_connection}"
        node = "row-" + name.replace(" ", "-").replace(":", "-").replace("=", "-")
        extra = ["--mesh-bootstrap", str(own_bootstrap(setup, node, mtls))]
        if new_connection:
            extra.append("--new-connection")
        return Running(_http_worker(setup, name, f"http://{target}{HTTP_PATH}", *extra))

    return start


def _envoy_pair(tls: bool) -> Callable[[Setup], Running]:
    def start(setup: Setup) -> Running:
        client, server = start_sidecar_pair(setup.lab, setup.http_port, tls=tls)
        url = f"http://127.0.0.1:{client.ready['port']}{HTTP_PATH}"
        worker = _http_worker(setup, f"envoy pair tls={tls}", url)
        return Running(worker, [client.popen.pid, server.popen.pid])

    return start


def plain_grpc(setup: Setup) -> Running:
    target = f"127.0.0.1:{setup.grpc_port}"
    return Running(
        Worker("plain grpc", ["--kind", "grpc", "--target", target], setup.lab.workdir, {})
    )


def grpc_library_mode(setup: Setup) -> Running:
    argv = ["--kind", "grpc", "--target", setup.grpc_authority]
    argv += ["--mesh-bootstrap", str(own_bootstrap(setup, "row-grpc-library", False))]
    return Running(Worker("grpc library", argv, setup.lab.workdir, {}))


def grpc_native_xds(setup: Setup) -> Running:
    """grpcio reads GRPC_XDS_BOOTSTRAP once per process: this row's worker
    process is the only one that gets it."""
    env = {"GRPC_XDS_BOOTSTRAP": str(setup.grpc_bootstrap)}
    argv = ["--kind", "grpc", "--target", f"xds:///{setup.grpc_authority}"]
    return Running(Worker("grpc xds", argv, setup.lab.workdir, env))


# -- ingress gateway rows: the 1 KB server through `meshctl gateway run` (its agent
# and Envoy are the row's side processes), one gateway per row with its own
# Gateway and VirtualService (hosts "*"), to a plaintext or an mTLS upstream.

GATEWAY_NAMESPACE = "default"
GATEWAY_PORT = 8000


def _gateway_config(name: str, upstream: str) -> str:
    host, port = upstream.rsplit(":", 1)
    docs = [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": GATEWAY_NAMESPACE},
            "spec": {
                "selector": {"istio": name},
                "servers": [
                    {
                        "port": {"number": GATEWAY_PORT, "name": "http", "protocol": "HTTP"},
                        "hosts": ["*"],
                    }
                ],
            },
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": GATEWAY_NAMESPACE},
            "spec": {
                "hosts": ["*"],
                "gateways": [name],
                "http": [
                    {"route": [{"destination": {"host": host, "port": {"number": int(port)}}}]}
                ],
            },
        },
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


def _listener_port(admin: str, name: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://{admin}/listeners?format=json", timeout=5) as r:
            for item in json.loads(r.read()).get("listener_statuses", []):
                if item["name"] == name:
                    return int(item["local_address"]["socket_address"]["port_value"])
        time.sleep(0.05)
    raise RuntimeError(f"the gateway has no listener {name} after {timeout}s")


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _gateway_row(upstream: Callable[[Setup], str], label: str) -> Callable[[Setup], Running]:
    def start(setup: Setup) -> Running:
        lab = setup.lab
        name = f"bench-gw-{label}"
        lab.write_config(f"{name}.yaml", _gateway_config(name, upstream(setup)))
        admin_file = lab.workdir / f"{name}-admin.txt"
        log = lab.workdir / f"{name}.log"
        argv = [
            str(BIN / "meshctl"),
            "gateway",
            "run",
            "--name",
            name,
            "--namespace",
            GATEWAY_NAMESPACE,
        ]
        argv += ["--xds-address", lab.xds_address, "--ca-address", lab.ca_address]
        argv += ["--token", lab.token(GATEWAY_NAMESPACE, name), "--bind-address", "127.0.0.1"]
        argv += ["--free-ports", "--admin-address-path", str(admin_file), "--envoy", str(ENVOY)]
        with open(log, "wb") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        lab.procs.append(Proc(name, popen, {}, log))  # stopped with the lab
        deadline = time.monotonic() + 30
        while not admin_file.exists() or not admin_file.read_text().strip():
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        port = _listener_port(admin_file.read_text().strip(), f"0.0.0.0_{GATEWAY_PORT}")
        worker = _http_worker(setup, name, f"http://127.0.0.1:{port}{HTTP_PATH}")
        return Running(worker, [popen.pid, *_children(popen.pid)])

    return start


MESH_MTLS = "mesh transport, mTLS"
ENVOY_MTLS = "Envoy sidecar pair, mTLS"

BENCH = "bench.default.mesh:8080"
MTLS_BASE = "mesh plaintext, kept-alive"
MTLS_PLAIN_NEW = "mesh plaintext, new connection per request"
MTLS_NEW = "mesh mTLS, new connection per request"

ROWS: list[Row] = [
    Row("http", "plain httpx", plain_httpx),
    Row("http", "mesh transport, plaintext", mesh_plaintext),
    Row("http", MESH_MTLS, mesh_mtls),
    Row("http", ENVOY_MTLS, _envoy_pair(tls=True)),
    Row("http", "Envoy sidecar pair, plaintext", _envoy_pair(tls=False)),
    Row(
        "http",
        "Envoy ingress gateway (meshctl gateway run), plaintext upstream",
        _gateway_row(lambda setup: setup.http_authority, "plain"),
    ),
    Row(
        "http",
        "Envoy ingress gateway, ISTIO_MUTUAL upstream",
        _gateway_row(lambda setup: setup.mtls_authority, "mtls"),
    ),
    Row("grpc", "plain channel", plain_grpc),
    Row("grpc", "library mode (mesh.grpc_channel)", grpc_library_mode),
    Row("grpc", "grpcio native xDS (xds:///)", grpc_native_xds),
    # Resilience engine cost on the no-failure path (closed loop only).
    Row("resilience", "plain httpx", plain_httpx),
    Row(
        "resilience",
        "mesh, Istio's default retry policy",
        _mesh_row("resdefault.default.mesh:8080", mtls=False, new_connection=False),
    ),
    Row(
        "resilience",
        "mesh, retries: {attempts: 0}",
        _mesh_row("resoff.default.mesh:8080", mtls=False, new_connection=False),
    ),
    # mTLS: handshake per request vs kept-alive connections (closed loop only).
    Row("mtls", MTLS_BASE, _mesh_row(BENCH, mtls=False, new_connection=False)),
    Row("mtls", "mesh mTLS, kept-alive", _mesh_row(BENCH, mtls=True, new_connection=False)),
    Row("mtls", MTLS_PLAIN_NEW, _mesh_row(BENCH, mtls=False, new_connection=True)),
    Row("mtls", MTLS_NEW, _mesh_row(BENCH, mtls=True, new_connection=True)),
]
