"""Run a small mesh on 127.0.0.1: a control plane, backends, config files.

Shared by `make demo`, the benchmarks and the integration tests, so all
three start real processes the same way. Every process binds port 0 and
reports its port through a ready file; `LocalMesh.close()` stops them all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


class ProcessFailed(RuntimeError):
    """A helper process exited or did not become ready in time."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    ready: dict[str, Any]
    log: Path
    ready_file: Path | None = None

    def wait_ready(self, timeout: float = 20.0) -> dict[str, Any]:
        """For a process started with `wait=False`: wait for its ready file."""
        if self.ready_file is None:
            return self.ready
        _await_ready_file(self.name, self.popen, self.ready_file, self.log, timeout)
        self.ready = json.loads(self.ready_file.read_text())
        return self.ready

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def start_process(
    name: str,
    argv: Sequence[str],
    workdir: Path,
    *,
    timeout: float = 20.0,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> Proc:
    """Start argv with `--ready-file` appended and wait for the file (unless
    `wait` is False: then `Proc.wait_ready()` does)."""
    ready = workdir / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            [*argv, "--ready-file", str(ready)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=HERE,
        )
    if not wait:
        return Proc(name, popen, {}, log, ready)
    _await_ready_file(name, popen, ready, log, timeout)
    return Proc(name, popen, json.loads(ready.read_text()), log)


def _await_ready_file(
    name: str, popen: subprocess.Popen[bytes], ready: Path, log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not ready.exists():  # the process announces readiness by creating the file
        if popen.poll() is not None:
            raise ProcessFailed(f"{name} exited with {popen.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            popen.kill()
            raise ProcessFailed(f"{name} not ready after {timeout}s:\n{log.read_text()}")
        time.sleep(0.01)


def write_file_atomically(path: Path, text: str) -> None:
    """Replace a config file in one step so the watcher never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def service_entry(
    host: str,
    port: int,
    endpoints: Iterable[tuple[str, int, dict[str, str]]],
    *,
    protocol: str = "HTTP",
    name: str | None = None,
    namespace: str = "default",
    service_account: str | None = None,
) -> str:
    """YAML for a STATIC ServiceEntry with one port and the given instances;
    with `service_account` every instance runs as it (auto mTLS on)."""
    account = {"serviceAccount": service_account} if service_account else {}
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name or host.split(".")[0], "namespace": namespace},
        "spec": {
            "hosts": [host],
            "ports": [{"number": port, "name": protocol.lower(), "protocol": protocol}],
            "resolution": "STATIC",
            "location": "MESH_INTERNAL",
            "endpoints": [
                {"address": addr, "ports": {protocol.lower(): p}, "labels": labels, **account}
                for addr, p, labels in endpoints
            ],
        },
    }
    return json.dumps(doc, indent=2)  # JSON is YAML


def subsets_rule(host: str, versions: Iterable[str], *, namespace: str = "default") -> str:
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": host.split(".")[0], "namespace": namespace},
        "spec": {
            "host": host,
            "subsets": [{"name": v, "labels": {"version": v}} for v in versions],
        },
    }
    return json.dumps(doc, indent=2)


def weighted_route(host: str, weights: dict[str, int], *, namespace: str = "default") -> str:
    """A VirtualService splitting all traffic for host across subsets."""
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": host.split(".")[0], "namespace": namespace},
        "spec": {
            "hosts": [host],
            "http": [
                {
                    "route": [
                        {"destination": {"host": host, "subset": subset}, "weight": weight}
                        for subset, weight in weights.items()
                    ]
                }
            ],
        },
    }
    return json.dumps(doc, indent=2)


@dataclass
class LocalMesh:
    """A control plane plus backends in one work directory."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    control_plane: Proc | None = None
    ads: str = "sotw"  # the ADS variant bootstraps written by `bootstrap` ask for

    @property
    def config_dir(self) -> Path:
        path = self.workdir / "config"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def xds_address(self) -> str:
        if self.control_plane is None:
            raise RuntimeError("control plane not started")
        return str(self.control_plane.ready["xds"])

    @property
    def admin_address(self) -> str:
        if self.control_plane is None:
            raise RuntimeError("control plane not started")
        return str(self.control_plane.ready["admin"])

    def write_config(self, name: str, text: str) -> None:
        write_file_atomically(self.config_dir / name, text)

    def deploy_versions(
        self,
        host: str,
        port: int,
        backends: dict[str, Proc],
        weights: dict[str, int],
        *,
        protocol: str = "HTTP",
        service_account: str | None = None,
    ) -> None:
        """Declare `host` served by one backend per version (labels
        version=<v>), a subset per version, and a split by `weights`. Files:
        `<name>.yaml` for the service, `route.yaml` for the split.
        `service_account`: the backends' identity (auto mTLS on)."""
        instances = [("127.0.0.1", p.ready["port"], {"version": v}) for v, p in backends.items()]
        self.write_config(
            f"{host.split('.')[0]}.yaml",
            service_entry(host, port, instances, protocol=protocol, service_account=service_account)
            + "\n---\n"
            + subsets_rule(host, list(backends)),
        )
        self.set_weights(host, weights)

    def set_weights(self, host: str, weights: dict[str, int]) -> None:
        self.write_config("route.yaml", weighted_route(host, weights))

    def start_control_plane(self, xds_port: int = 0, extra_args: Sequence[str] = ()) -> Proc:
        """`extra_args` go to `meshctl control-plane` (e.g. ["--leaf-ttl", "20s"]).
        A port other than 0 is one this test holds (see tests/processes.py `reserved_port`)."""
        proc = start_process(
            "control-plane",
            [
                str(BIN / "meshctl"),
                "control-plane",
                "--config-dir",
                str(self.config_dir),
                "--xds-address",
                f"127.0.0.1:{xds_port}",
                "--admin-address",
                "127.0.0.1:0",
                *extra_args,
            ],
            self.workdir,
        )
        self.control_plane = proc
        self.procs.append(proc)
        return proc

    def start_http_backend(self, service: str, version: str, *extra: str) -> Proc:
        """A uvicorn backend; `extra` are backend.py flags (--fail-rate, --delay)."""
        return self._start_example("backend.py", service, version, *extra)

    def start_grpc_backend(self, service: str, version: str) -> Proc:
        return self._start_example("grpc_backend.py", service, version)

    def _start_example(self, script: str, service: str, version: str, *extra: str) -> Proc:
        proc = start_process(
            f"{service}-{version}-{len(self.procs)}",
            [
                sys.executable,
                str(HERE / script),
                "--service",
                service,
                "--version",
                version,
                *extra,
            ],
            self.workdir,
        )
        self.procs.append(proc)
        return proc

    @property
    def ca_address(self) -> str:
        """Where the control plane's CA listens (its ready file's "ca")."""
        if self.control_plane is None:
            raise RuntimeError("control plane not started")
        return str(self.control_plane.ready["ca"])

    @property
    def ca_dir(self) -> Path:
        """The control plane's default CA dir: `mesh-ca` beside the config dir."""
        return self.workdir / "mesh-ca"

    def token(self, namespace: str, sa: str, ttl: str = "1h") -> str:
        """A join token from `meshctl token create` for this mesh's CA."""
        done = subprocess.run(
            [
                str(BIN / "meshctl"),
                "token",
                "create",
                "--namespace",
                namespace,
                "--service-account",
                sa,
                "--ttl",
                ttl,
                "--ca-dir",
                str(self.ca_dir),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()

    def bootstrap(
        self,
        node_id: str,
        namespace: str = "default",
        sa: str = "default",
        *,
        token: str | None = None,
        credentials_dir: Path | None = None,
        labels: dict[str, str] | None = None,
        xds_address: str | None = None,
        ca_address: str | None = None,
    ) -> Path:
        """Write a workload bootstrap; with `token` it also carries the CA
        address and the token (and `credentials_dir` for grpcio's files);
        `labels` are the workload's (node metadata LABELS). The addresses
        default to the running control plane's."""
        path = self.workdir / f"bootstrap-{node_id}.json"
        identity: list[str] = [f"--label={k}={v}" for k, v in (labels or {}).items()]
        if token is not None:
            identity += ["--ca-address", ca_address or self.ca_address, "--token", token]
        if credentials_dir is not None:
            identity += ["--credentials-dir", str(credentials_dir)]
        subprocess.run(
            [
                str(BIN / "meshctl"),
                "bootstrap",
                "--xds-address",
                xds_address or self.xds_address,
                "--node-id",
                node_id,
                "--namespace",
                namespace,
                "--service-account",
                sa,
                "-o",
                str(path),
                "--ads",
                self.ads,
                *identity,
            ],
            check=True,
        )
        if "XDG_CACHE_HOME" not in os.environ:
            # The demo and benchmarks keep the workload's config (and certificate)
            # cache in the lab's own directory, not the user's ~/.cache; the tests
            # point XDG_CACHE_HOME at a directory of their own.
            document = json.loads(path.read_text())
            document.setdefault("proxyless_mesh", {})["config_cache_path"] = str(
                self.workdir / f"xds-{node_id}.cache"
            )
            path.write_text(json.dumps(document, indent=2))
        return path

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
