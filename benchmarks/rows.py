"""The data-path rows: one registry, so a new feature is one more entry.

A row names a client path and knows how to start it against the shared
servers (`Setup`): a load worker process (load_worker.py) and any sidecar
processes whose CPU and memory count for the row. A row whose feature does
not exist yet is listed with `missing` set: the tables show it as not
measured and say why, so the gap is visible until someone fills it in.

To add a row (e.g. when the library's mTLS lands): write a start function
returning `Running` and append a `Row` to ROWS. The first row of a section
is its baseline; added latency and ratios are against it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import cpu_seconds, rss_kb
from meshlab import LocalMesh
from sidecars import start_sidecar_pair

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
    section: str  # "http" or "grpc"
    name: str
    start: Callable[[Setup], Running] | None
    missing: str = ""  # why it cannot be measured yet (start is None)


def _http_worker(setup: Setup, name: str, url: str, *extra: str) -> Worker:
    return Worker(name, ["--kind", "http", "--target", url, *extra], setup.lab.workdir, {})


def plain_httpx(setup: Setup) -> Running:
    url = f"http://127.0.0.1:{setup.http_port}{HTTP_PATH}"
    return Running(_http_worker(setup, "plain httpx", url))


def mesh_plaintext(setup: Setup) -> Running:
    url = f"http://{setup.http_authority}{HTTP_PATH}"
    bootstrap = ["--mesh-bootstrap", str(setup.mesh_bootstrap)]
    return Running(_http_worker(setup, "mesh plaintext", url, *bootstrap))


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


def grpc_native_xds(setup: Setup) -> Running:
    """grpcio reads GRPC_XDS_BOOTSTRAP once per process: this row's worker
    process is the only one that gets it."""
    env = {"GRPC_XDS_BOOTSTRAP": str(setup.grpc_bootstrap)}
    argv = ["--kind", "grpc", "--target", f"xds:///{setup.grpc_authority}"]
    return Running(Worker("grpc xds", argv, setup.lab.workdir, env))


MESH_MTLS = "mesh transport, mTLS"
ENVOY_MTLS = "Envoy sidecar pair, mTLS"

ROWS: list[Row] = [
    Row("http", "plain httpx", plain_httpx),
    Row("http", "mesh transport, plaintext", mesh_plaintext),
    Row("http", MESH_MTLS, None, missing="library mTLS is not built yet"),
    Row("http", ENVOY_MTLS, _envoy_pair(tls=True)),
    Row("http", "Envoy sidecar pair, plaintext", _envoy_pair(tls=False)),
    Row("grpc", "plain channel", plain_grpc),
    Row("grpc", "library mode", None, missing="the library's gRPC integration is not built yet"),
    Row("grpc", "grpcio native xDS (xds:///)", grpc_native_xds),
]
