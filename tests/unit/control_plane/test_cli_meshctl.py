"""`meshctl`: the control-plane command as a real process, bootstrap output, and
status rendering checked against golden text."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from mesh_control_plane.cli.main import main
from mesh_control_plane.cli.status_cmd import render_status
from mesh_control_plane.translate import LISTENER

MESHCTL = str(Path(sys.executable).with_name("meshctl"))
DEADLINE = 20.0

SERVICE_YAML = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: default
spec:
  hosts: [reviews.default.svc]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  endpoints:
  - address: 10.0.0.1
"""

BAD_YAML = SERVICE_YAML.replace("name: reviews", "name: broken").replace(
    "resolution: STATIC", "resolution: STATIC\n  frobnicate: true"
)


class Running:
    """A `meshctl control-plane` process and what it wrote."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr: Path, ready: dict[str, str]):
        self.proc, self.stderr_path, self.ready = proc, stderr, ready

    @property
    def admin(self) -> str:
        return f"http://{self.ready['admin']}"

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes]) -> None:
    """Poll `condition` until it holds; fail early if the process died."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"meshctl exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def start_control_plane(tmp_path: Path) -> Iterator[Callable[[Path], Running]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(config_dir: Path) -> Running:
        ready_file, stderr = tmp_path / "ready.json", tmp_path / "stderr.txt"
        with stderr.open("wb") as err:
            proc = subprocess.Popen(
                [
                    MESHCTL,
                    "control-plane",
                    f"--config-dir={config_dir}",
                    "--xds-address=127.0.0.1:0",
                    "--admin-address=127.0.0.1:0",
                    f"--ready-file={ready_file}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        started.append(proc)
        wait_for(ready_file.exists, "the ready file", proc)
        return Running(proc, stderr, json.loads(ready_file.read_text()))

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def config_dir(tmp_path: Path, **files: str) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def stop(running: Running) -> int:
    running.proc.send_signal(signal.SIGTERM)
    return running.proc.wait(timeout=DEADLINE)


def test_control_plane_serves_then_exits_cleanly_on_sigterm(
    tmp_path: Path, start_control_plane: Callable[[Path], Running]
) -> None:
    running = start_control_plane(config_dir(tmp_path, **{"services.yaml": SERVICE_YAML}))
    assert set(running.ready) == {"xds", "admin", "ca"}
    assert running.ready["xds"].startswith("127.0.0.1:")
    assert httpx.get(f"{running.admin}/healthz").json() == {"status": "ok"}
    status = httpx.get(f"{running.admin}/status").json()
    assert status == {
        "version": "1",
        "clients": [],
        "config_errors": [],
        "config_problems": [],
        "config_warnings": [],
    }
    assert stop(running) == 0


def test_reload_error_is_printed_and_last_good_kept(
    tmp_path: Path, start_control_plane: Callable[[Path], Running]
) -> None:
    directory = config_dir(tmp_path, **{"services.yaml": SERVICE_YAML})
    running = start_control_plane(directory)
    (directory / "bad.yaml").write_text(BAD_YAML)
    wait_for(lambda: "config error: bad.yaml" in running.stderr(), "the error", running.proc)
    lines = [line for line in running.stderr().splitlines() if line.startswith("config error: ")]
    assert any("frobnicate" in line for line in lines)
    status = httpx.get(f"{running.admin}/status").json()
    assert status["version"] == "1"
    assert [f"config error: {e}" for e in status["config_errors"]] == lines
    assert stop(running) == 0


def test_initial_errors_are_printed_and_an_empty_config_served(
    tmp_path: Path, start_control_plane: Callable[[Path], Running]
) -> None:
    running = start_control_plane(config_dir(tmp_path, **{"bad.yaml": BAD_YAML}))
    assert "config error: bad.yaml" in running.stderr()  # printed before ready
    status = httpx.get(f"{running.admin}/status").json()
    assert status["version"] == "0"
    assert status["config_errors"]
    # Only the reference workload's inbound passthrough (what selects it: nothing).
    assert list(httpx.get(f"{running.admin}/config_dump").json()["resources"]["LDS"]) == [
        "virtualInbound"
    ]
    assert stop(running) == 0


async def _connect_and_ack(xds: str, node_id: str) -> grpc.aio.Channel:
    """An ADS client that subscribes to one listener and ACKs it."""
    channel = grpc.aio.insecure_channel(xds)
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
    node = base_pb2.Node(id=node_id, user_agent_name="proxyless-mesh")
    names = ["reviews.default.svc:8080"]
    await call.write(
        discovery_pb2.DiscoveryRequest(node=node, type_url=LISTENER, resource_names=names)
    )
    response = await asyncio.wait_for(call.read(), DEADLINE)
    await call.write(
        discovery_pb2.DiscoveryRequest(
            type_url=LISTENER,
            resource_names=names,
            version_info=response.version_info,
            response_nonce=response.nonce,
        )
    )
    # Barrier: once this is answered, the ACK before it has been recorded.
    await call.write(discovery_pb2.DiscoveryRequest(type_url=LISTENER, resource_names=[]))
    await asyncio.wait_for(call.read(), DEADLINE)
    return channel


async def test_meshctl_status_shows_a_connected_client(
    tmp_path: Path, start_control_plane: Callable[[Path], Running]
) -> None:
    running = start_control_plane(config_dir(tmp_path, **{"services.yaml": SERVICE_YAML}))
    channel = await _connect_and_ack(running.ready["xds"], "web-1")
    try:
        table = await _meshctl("status", f"--admin-address={running.ready['admin']}")
        raw = await _meshctl("status", "--json", f"--admin-address={running.ready['admin']}")
    finally:
        await channel.close()
    assert table.splitlines()[1:] == [
        "NODE ID  KIND  LDS  RDS  CDS  EDS",
        "web-1    MESH  1    -    -    -",
    ]
    assert json.loads(raw)["clients"][0]["types"]["LDS"]["acked"] == "1"
    assert stop(running) == 0


async def _meshctl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        MESHCTL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def test_status_reports_an_unreachable_admin(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["status", f"--admin-address=127.0.0.1:{port}", "--timeout=2"]) == 1
    assert f"cannot read status from 127.0.0.1:{port}" in capsys.readouterr().err


STATUS = {
    "version": "7",
    "clients": [
        {
            "node_id": "reviews-v1-7d9f",
            "kind": "GRPC",
            "user_agent": "gRPC C-core linux Python",
            "peer": "ipv4:127.0.0.1:40112",
            "connected_at": 1700000000.0,
            "types": {
                "LDS": {"subscribed": ["reviews:8080"], "sent": "7", "acked": "7"},
                "RDS": {"subscribed": ["reviews:8080"], "sent": "7", "acked": "7"},
                "CDS": {
                    "subscribed": ["outbound|8080||reviews"],
                    "sent": "7",
                    "acked": "6",
                    "nacked": "7",
                    "error": "index 0: LB policy\n  not supported",
                },
                "EDS": {"subscribed": ["outbound|8080||reviews"], "sent": "7", "acked": ""},
            },
        },
        {
            "node_id": "web",
            "kind": "MESH",
            "user_agent": "proxyless-mesh",
            "peer": "ipv4:127.0.0.1:40113",
            "connected_at": 1700000001.0,
            "types": {"CDS": {"subscribed": ["*"], "sent": "7", "acked": "7"}},
        },
    ],
    "config_errors": ["bad.yaml: VirtualService default/bad: spec.http[0].frobnicate: unknown"],
}

GOLDEN = """\
config version: 7
NODE ID          KIND  LDS  RDS  CDS                                         EDS
reviews-v1-7d9f  GRPC  7    7    NACKED 7: index 0: LB policy not supported  (sent 7)
web              MESH  -    -    7                                           -
config errors (serving the last good config, version above):
  bad.yaml: VirtualService default/bad: spec.http[0].frobnicate: unknown
"""


def test_render_status_matches_golden() -> None:
    assert render_status(STATUS) == GOLDEN
    empty = {"version": "0", "clients": [], "config_errors": [], "config_warnings": []}
    assert render_status(empty) == "config version: 0\nno clients connected\n"
    warned = {**empty, "config_warnings": ["vs.yaml: VirtualService default/r: subset"]}
    assert render_status(warned).endswith(
        "config warnings (the config in use loads, but):\n"
        "  vs.yaml: VirtualService default/r: subset\n"
    )


def test_render_status_marks_delta_streams() -> None:
    web = {**STATUS["clients"][1], "protocol": "delta"}  # type: ignore[index]
    text = render_status({**STATUS, "clients": [web]})
    assert "web      MESH (delta)  -    -    7    -" in text.splitlines()


def test_bootstrap_asks_for_delta_only_when_told(tmp_path: Path) -> None:
    args = ["bootstrap", "--xds-address=127.0.0.1:1", "--node-id=w", "--namespace=n"]
    args += ["--service-account=s"]
    assert main([*args, "-o", str(tmp_path / "sotw.json")]) == 0
    assert "proxyless_mesh" not in json.loads((tmp_path / "sotw.json").read_text())
    assert main([*args, "--ads", "delta", "-o", str(tmp_path / "delta.json")]) == 0
    written = json.loads((tmp_path / "delta.json").read_text())
    assert written["proxyless_mesh"] == {"ads": "delta"}


def test_bootstrap_to_file_and_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "bootstrap",
        "--xds-address=127.0.0.1:15010",
        "--node-id=web-1",
        "--namespace=shop",
        "--service-account=web",
        "--locality=us-east1/us-east1-b",
    ]
    out = tmp_path / "bootstrap.json"
    assert main([*args, "-o", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["xds_servers"][0]["server_uri"] == "127.0.0.1:15010"
    assert written["node"]["id"] == "web-1"
    assert written["node"]["metadata"] == {"NAMESPACE": "shop", "SERVICE_ACCOUNT": "web"}
    assert written["node"]["locality"] == {"region": "us-east1", "zone": "us-east1-b"}

    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == written


def test_bootstrap_with_a_ca_names_grpcio_credential_files_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --ca-address and no --credentials-dir, grpcio's file_watcher
    provider points beside the -o file (or under the cache dir for stdout);
    'none' leaves it out; without a CA there is nothing to name."""
    args = ["bootstrap", "--xds-address=x:1", "--node-id=web-1", "--namespace=shop"]
    args += ["--service-account=web", "--ca-address=127.0.0.1:15012"]
    out = tmp_path / "bootstrap.json"
    assert main([*args, "-o", str(out)]) == 0
    written = json.loads(out.read_text())
    certs = tmp_path / "bootstrap.credentials"
    assert written["proxyless_mesh"]["credentials_dir"] == str(certs)
    provider = written["certificate_providers"]["default"]
    assert provider["plugin_name"] == "file_watcher"
    assert provider["config"]["certificate_file"] == str(certs / "cert-chain.pem")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = tmp_path / "cache" / "proxyless-mesh" / "credentials" / "web-1"
    assert printed["proxyless_mesh"]["credentials_dir"] == str(expected)

    assert main([*args, "--credentials-dir", "none"]) == 0
    assert "certificate_providers" not in json.loads(capsys.readouterr().out)
    assert main(args[:-1]) == 0
    assert "certificate_providers" not in json.loads(capsys.readouterr().out)


def test_bootstrap_refuses_a_bad_locality(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "bootstrap",
                "--xds-address=x:1",
                "--node-id=n",
                "--namespace=ns",
                "--service-account=sa",
                "--locality=a/b/c/d",
            ]
        )
    assert exited.value.code == 2
    assert "region/zone/subzone" in capsys.readouterr().err


def test_meshctl_console_script_is_installed() -> None:
    assert os.access(MESHCTL, os.X_OK)
