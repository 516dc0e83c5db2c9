"""The in-process control plane the registration tests share (not a test module).

Self-registration tests need what a subprocess control plane hides: its registry
(members, refusals, WorkloadGroups) and the EDS it would send right now. `Plane`
runs a real `ControlPlane` with a CA on its own event loop thread, so a test reads
those synchronously while real backend processes register over the network.
The constants describe the one service they all use (reviews, selected by a
WorkloadGroup's labels); `start_backend` starts one of the backend scripts with a
bootstrap carrying a token of the identity it registers as.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
from envoy.config.core.v3 import health_check_pb2
from mesh_control_plane.app import ControlPlane
from mesh_control_plane.ca import CaSettings, TokenAuthority
from mesh_control_plane.registry.runtime import RegistrySettings
from mesh_control_plane.translate.names import cluster_name
from mesh_control_plane.translate.node import ClientKind, NodeInfo
from mesh_control_plane.translate.resources import ENDPOINT
from meshlab import LocalMesh, Proc, start_process, subsets_rule, weighted_route

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap, make_bootstrap_json
from proxyless_mesh.security import SpiffeId

HERE = Path(__file__).parent
REGISTERING_BACKEND = HERE / "registering_backend.py"

HOST = "reviews.default.svc"
URL = f"http://{HOST}:9080/reviews"
GRACE = 1.5


def service_entry(name: str, port: dict[str, object], labels: dict[str, str]) -> dict[str, object]:
    """A STATIC ServiceEntry `name`.default.svc whose endpoints are the registered
    workloads carrying `labels` (none written in YAML)."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "location": "MESH_INTERNAL",
            "hosts": [f"{name}.default.svc"],
            "ports": [port],
            "resolution": "STATIC",
            "workloadSelector": {"labels": labels},
        },
    }


SERVICE_ENTRY = service_entry(
    "reviews", {"number": 9080, "name": "http", "protocol": "HTTP"}, {"app": "reviews"}
)
# The gRPC face of the same workloads: only those labelled speaks=grpc.
GRPC_HOST = "reviews-grpc.default.svc"
GRPC_SERVICE_ENTRY = service_entry(
    "reviews-grpc",
    {"number": 9090, "name": "grpc", "protocol": "GRPC"},
    {"app": "reviews", "speaks": "grpc"},
)


def group(name: str, sa: str) -> dict[str, object]:
    """A WorkloadGroup admitting the identity `sa` as app=`name` on http 9080."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadGroup",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "metadata": {"labels": {"app": name}},
            "template": {"serviceAccount": sa, "ports": {"http": 9080}},
        },
    }


def wait_for(check: Callable[[], bool], limit: float, what: str) -> None:
    """Poll `check`: the registry and EDS have no event a test could await."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {limit}s")
        time.sleep(0.02)


class Plane:
    """A ControlPlane on its own event loop thread."""

    def __init__(
        self, config_dir: Path, ca_dir: Path, registry: RegistrySettings, xds_workers: int = 1
    ) -> None:
        self.config_dir = config_dir
        self.ca_dir = ca_dir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.plane = ControlPlane(
            config_dir, ca=CaSettings(ca_dir=ca_dir), registry=registry, xds_workers=xds_workers
        )
        self.addresses = self._run(self.plane.start("127.0.0.1:0", "127.0.0.1:0"))

    @classmethod
    def with_groups_dir(
        cls, workdir: Path, grpc_service: bool = False, xds_workers: int = 1
    ) -> Plane:
        """reviews split 50/50 between subsets v1 and v2, the `reviews` and
        `ratings` WorkloadGroups in a --workload-groups-dir; with `grpc_service`
        also GRPC_SERVICE_ENTRY (GRPC_HOST:9090); `xds_workers` > 1: ADS served
        by that many worker processes (registration forwarded to this one)."""
        config_dir = workdir / "config"
        groups_dir = workdir / "groups"
        for d in (config_dir, groups_dir):
            d.mkdir()
        (config_dir / "reviews.yaml").write_text(
            json.dumps(SERVICE_ENTRY) + "\n---\n" + subsets_rule(HOST, ["v1", "v2"])
        )
        (config_dir / "route.yaml").write_text(weighted_route(HOST, {"v1": 50, "v2": 50}))
        if grpc_service:
            (config_dir / "extra.yaml").write_text(json.dumps(GRPC_SERVICE_ENTRY))
        (groups_dir / "groups.yaml").write_text(
            json.dumps(group("reviews", "reviews"))
            + "\n---\n"
            + json.dumps(group("ratings", "ratings"))
        )
        registry = RegistrySettings(workload_groups_dir=groups_dir, grace=GRACE)
        return cls(config_dir, workdir / "mesh-ca", registry, xds_workers)

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(20)

    def ports(self) -> list[int]:
        """The registered instances' ports the translator serves (HEALTHY) for HOST now."""
        return sorted(port for port, health in self.eds().items() if health == "HEALTHY")

    def eds(self, host: str = HOST, port: int = 9080) -> dict[int, str]:
        """port -> health_status of every endpoint of host:port in the EDS a mesh
        client gets now (the whole-service cluster: it holds every instance)."""

        async def read() -> dict[int, str]:
            node = NodeInfo(id="observer", kind=ClientKind.MESH)
            packed = self.plane.cache.resources(node, ENDPOINT)[cluster_name(host, port)]
            return {
                lb.endpoint.address.socket_address.port_value: (
                    health_check_pb2.HealthStatus.Name(lb.health_status)
                )
                for locality in packed.message.endpoints  # type: ignore[attr-defined]
                for lb in locality.lb_endpoints
            }

        return self._run(read())  # type: ignore[no-any-return]

    def members(self) -> dict[str, Any]:
        """The embedded registry's members by node id, read on the plane's loop."""

        async def read() -> dict[str, Any]:
            return dict(self.plane.registry.status()["EmbeddedRegistry"]["members"])

        return self._run(read())  # type: ignore[no-any-return]

    def group_refs(self) -> list[str]:
        """The WorkloadGroups the registry admits into now ("ns/name")."""

        async def read() -> list[str]:
            return [g.ref for g in self.plane.registry.workload_groups()]

        return self._run(read())  # type: ignore[no-any-return]

    def bootstrap(self, workdir: Path, node: str, sa: str) -> Path:
        """A bootstrap file for `node` with a token of the identity `sa`."""
        token = TokenAuthority.open(self.ca_dir).mint(
            SpiffeId("cluster.local", "default", sa), 3600
        )
        path = workdir / f"bootstrap-{node}.json"
        path.write_text(
            make_bootstrap_json(
                server_uri=self.addresses.xds,
                node_id=node,
                namespace="default",
                service_account=sa,
                token=token,
            )
        )
        return path

    def client_bootstrap(self, workdir: Path) -> Bootstrap:
        """The mesh client's bootstrap (identity `client`, registers nothing)."""
        return Bootstrap.from_file(self.bootstrap(workdir, "client", "client"))

    def close(self) -> None:
        self._run(self.plane.stop(grace=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def serve_plane(lab: LocalMesh, plane: Plane) -> Iterator[Plane]:
    """The body of a `plane` fixture: yields `plane`, then stops the workloads
    first and the control plane they talk to last (so none sees it vanish)."""
    try:
        yield plane
    finally:
        lab.close()
        plane.close()


def versions_answering(client: httpx.Client, requests: int) -> Counter[str]:
    """GET URL `requests` times through a mesh client: how often each version
    answered. Every request must succeed."""
    versions: Counter[str] = Counter()
    for _ in range(requests):
        response = client.get(URL)
        assert response.status_code == 200, response.text
        versions[response.json()["version"]] += 1
    return versions


def echo_version(mesh: Mesh) -> bytes:
    """Call /test.Echo/Version on GRPC_HOST:9090 through `mesh`: the answering
    backend's version (backend_support.echo_handler)."""
    channel = mesh.grpc_channel(f"{GRPC_HOST}:9090")
    try:
        # Raw bytes both ways: no serializers (the stubs want them spelled out).
        call = channel.unary_unary("/test.Echo/Version", None, None)
        return call(b"", timeout=10)  # type: ignore[no-any-return]
    finally:
        channel.close()


def start_backend(
    lab: LocalMesh, plane: Plane, script: Path, node: str, *args: str, sa: str = "reviews"
) -> Proc:
    """Start `script --bootstrap B *args` as `node` with identity `sa`; the lab
    stops it. Raises ProcessFailed if it exits before writing its ready file."""
    bootstrap = plane.bootstrap(lab.workdir, node, sa)
    argv = [sys.executable, str(script), "--bootstrap", str(bootstrap), *args]
    proc = start_process(node, argv, lab.workdir)
    lab.procs.append(proc)
    return proc


def start_workload(
    lab: LocalMesh, plane: Plane, node: str, version: str, grp: str = "reviews", sa: str = "reviews"
) -> Proc:
    """A registering_backend.py joining default/`grp` labelled version=`version`."""
    args = ("--group", f"default/{grp}", "--version", version)
    return start_backend(lab, plane, REGISTERING_BACKEND, node, *args, sa=sa)
