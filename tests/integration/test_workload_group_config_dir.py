"""A WorkloadGroup in the config directory, no --workload-groups-dir: a real control
plane admits a real workload into it, and a config reload that removes the group
refuses new members while the admitted one keeps serving (the documented rule)."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mesh_control_plane.app import ControlPlane
from mesh_control_plane.ca import CaSettings, TokenAuthority
from mesh_control_plane.registry.runtime import RegistrySettings
from meshlab import LocalMesh, start_process, subsets_rule
from test_registration_end_to_end import HOST, SERVICE_ENTRY, group, wait_for

from proxyless_mesh.bootstrap import make_bootstrap_json
from proxyless_mesh.security import SpiffeId

SCRIPT = Path(__file__).with_name("registering_backend.py")


class Plane:
    """A ControlPlane on its own loop thread; its only WorkloadGroup source is the
    config directory."""

    def __init__(self, workdir: Path) -> None:
        self.config_dir = workdir / "config"
        self.ca_dir = workdir / "mesh-ca"
        self.config_dir.mkdir()
        (self.config_dir / "reviews.yaml").write_text(
            json.dumps(SERVICE_ENTRY) + "\n---\n" + subsets_rule(HOST, ["v1"])
        )
        self.groups_file = self.config_dir / "groups.yaml"
        self.groups_file.write_text(json.dumps(group("reviews", "reviews")))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.plane = ControlPlane(
            self.config_dir,
            ca=CaSettings(ca_dir=self.ca_dir),
            registry=RegistrySettings(grace=1.5),  # no workload_groups_dir
        )
        self.addresses = self._run(self.plane.start("127.0.0.1:0", "127.0.0.1:0"))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(20)

    def members(self) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            return dict(self.plane.registry.status()["EmbeddedRegistry"]["members"])

        return self._run(read())  # type: ignore[no-any-return]

    def group_refs(self) -> list[str]:
        async def read() -> list[str]:
            return [g.ref for g in self.plane.registry.workload_groups()]

        return self._run(read())  # type: ignore[no-any-return]

    def bootstrap(self, workdir: Path, node: str) -> Path:
        token = TokenAuthority.open(self.ca_dir).mint(
            SpiffeId("cluster.local", "default", "reviews"), 3600
        )
        path = workdir / f"bootstrap-{node}.json"
        path.write_text(
            make_bootstrap_json(
                server_uri=self.addresses.xds,
                node_id=node,
                namespace="default",
                service_account="reviews",
                token=token,
            )
        )
        return path

    def close(self) -> None:
        self._run(self.plane.stop(grace=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def plane(lab: LocalMesh) -> Iterator[Plane]:
    p = Plane(lab.workdir)
    try:
        yield p
    finally:
        lab.close()  # the workloads first, then the control plane they talk to
        p.close()


def start_workload(lab: LocalMesh, plane: Plane, node: str) -> Any:
    proc = start_process(
        node,
        [
            sys.executable,
            str(SCRIPT),
            "--bootstrap",
            str(plane.bootstrap(lab.workdir, node)),
            "--group",
            "default/reviews",
            "--version",
            "v1",
        ],
        lab.workdir,
    )
    lab.procs.append(proc)
    return proc


def test_a_workload_joins_a_group_from_the_config_dir(lab: LocalMesh, plane: Plane) -> None:
    assert plane.plane.registry.settings.workload_groups_dir is None
    first = start_workload(lab, plane, "reviews-a")
    assert "port" in first.ready, first.ready
    wait_for(
        lambda: plane.members().get("reviews-a", {}).get("state") == "HEALTHY", 10, "admission"
    )
    assert plane.members()["reviews-a"]["group"] == "default/reviews"

    # The config watcher's reload applies the removal: new members are refused,
    # the admitted one is not evicted.
    plane.groups_file.unlink()
    wait_for(lambda: plane.group_refs() == [], 10, "the reload")
    refused = start_workload(lab, plane, "reviews-b")
    assert "NOT_FOUND" in refused.ready["refused"], refused.ready
    assert refused.popen.wait(10) == 3
    assert plane.members()["reviews-a"]["state"] == "HEALTHY"
    assert "reviews-b" not in plane.members()
    # It followed its own server listener as a server (gRFC A36), not as a
    # client one (which it would NACK): read once the process has ended.
    assert first.stop() == 0
    assert "NACK" not in first.log.read_text()
