"""The control plane's `/metrics` (Prometheus text) and `/config_dump?node=`,
over real sockets: an in-process control plane, a hand-driven ADS client
whose ACKs and NACKs are known, and config changes written to its directory."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2
from mesh_control_plane.app import ControlPlane
from mesh_control_plane.cli.main import main
from mesh_control_plane.metrics import ControlPlaneMetrics, Histogram
from mesh_control_plane.translate import ENDPOINT

STEP = 5.0
CLUSTER = "outbound|8080||reviews.default.svc"
SERVICE_YAML = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  endpoints:
  - address: ADDRESS
"""
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A small text-format parser: (name, labels) -> value; TYPE/HELP checked."""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if line.startswith("# "):
            assert line.split()[1] in ("HELP", "TYPE"), line
            continue
        match = _SAMPLE.match(line)
        assert match is not None, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        samples[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def write_service(config_dir: Path, address: str) -> None:
    tmp = config_dir / ".services.tmp"
    tmp.write_text(SERVICE_YAML.replace("ADDRESS", address))
    tmp.replace(config_dir / "services.yaml")


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, str, str, Path]]:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    write_service(config_dir, "10.0.0.1")
    plane = ControlPlane(config_dir, poll_interval=0.02)
    addresses = await plane.start("127.0.0.1:0", "127.0.0.1:0")
    yield plane, addresses.xds, addresses.admin, config_dir
    await plane.stop(grace=0)


class Client:
    """One ADS stream driven by hand."""

    def __init__(self, call: Any) -> None:
        self.call = call

    async def subscribe(self, node: Any, type_url: str, names: Sequence[str]) -> Any:
        await self.call.write(
            discovery_pb2.DiscoveryRequest(node=node, type_url=type_url, resource_names=names)
        )
        return await asyncio.wait_for(self.call.read(), STEP)

    async def answer(self, response: Any, error: str | None = None) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=response.type_url,
            resource_names=[CLUSTER],
            version_info=response.version_info,
            response_nonce=response.nonce,
        )
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(request)

    async def barrier(self) -> None:
        """A new subscription is answered only after what came before was handled."""
        await self.call.write(discovery_pb2.DiscoveryRequest(type_url="x", resource_names=["y"]))
        await asyncio.wait_for(self.call.read(), STEP)


async def scrape(admin: str) -> tuple[str, dict[Any, float]]:
    async with httpx.AsyncClient(base_url=f"http://{admin}") as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text, parse_prometheus(response.text)


def node(node_id: str) -> Any:
    metadata = struct_pb2.Struct()
    metadata.update({"NAMESPACE": "shop", "SERVICE_ACCOUNT": "web"})
    return base_pb2.Node(id=node_id, user_agent_name="proxyless-mesh", metadata=metadata)


async def test_metrics_count_pushes_acks_nacks_and_convergence(
    plane: tuple[ControlPlane, str, str, Path],
) -> None:
    control_plane, xds, admin, config_dir = plane
    async with grpc.aio.insecure_channel(xds) as channel:
        client = Client(
            ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        )
        first = await client.subscribe(node("web-1"), ENDPOINT, [CLUSTER])
        await client.answer(first)
        await client.barrier()
        _, before = await scrape(admin)

        write_service(config_dir, "10.0.0.2")  # change 1: pushed, then ACKed
        pushed = await asyncio.wait_for(client.call.read(), STEP)
        await client.answer(pushed)
        await client.barrier()
        _, after_ack = await scrape(admin)

        write_service(config_dir, "10.0.0.3")  # change 2: pushed, then NACKed
        pushed = await asyncio.wait_for(client.call.read(), STEP)
        await client.answer(pushed, error="no thanks")
        await client.barrier()

        errors = asyncio.Event()
        control_plane._on_config_error = lambda problems: errors.set()
        (config_dir / "bad.yaml").write_text("kind: Nonsense\n")  # a reload refused
        await asyncio.wait_for(errors.wait(), STEP)
        text, final = await scrape(admin)

        dump = await asyncio.to_thread(main, ["config-dump", "web-1", "--admin-address", admin])
        client.call.cancel()

    assert value(before, "meshcp_xds_clients", kind="MESH") == 1
    assert value(before, "meshcp_xds_clients", kind="ENVOY") == 0
    assert value(before, "meshcp_xds_pushes_total", type="EDS") == 1
    assert value(before, "meshcp_convergence_seconds_count") == 0
    assert value(before, "meshcp_config_version") == 1

    assert value(after_ack, "meshcp_xds_pushes_total", type="EDS") == 2
    # One more config change observed (the first load was one too, with nobody to push to).
    assert (
        value(after_ack, "meshcp_xds_push_duration_seconds_count")
        == value(before, "meshcp_xds_push_duration_seconds_count") + 1
    )
    assert value(after_ack, "meshcp_convergence_seconds_count") == 1
    assert value(after_ack, "meshcp_convergence_seconds_bucket", le="+Inf") == 1
    assert 0 < value(after_ack, "meshcp_last_convergence_seconds") < STEP

    assert value(final, "meshcp_xds_pushes_total", type="EDS") == 3
    assert value(final, "meshcp_xds_nacks_total", type="EDS") == 1
    assert (
        value(final, "meshcp_convergence_seconds_count") == 1
    )  # the NACKed round did not converge
    assert value(final, "meshcp_convergence_incomplete_total") == 1
    assert value(final, "meshcp_config_version") == 3
    assert value(final, "meshcp_config_errors") == 2  # apiVersion missing, kind unknown
    assert value(final, "meshcp_config_rejected_total") == 1
    assert "# TYPE meshcp_convergence_seconds histogram" in text
    assert dump == 0


async def test_config_dump_for_a_node_from_the_control_plane(
    plane: tuple[ControlPlane, str, str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, xds, admin, _ = plane
    async with grpc.aio.insecure_channel(xds) as channel:
        client = Client(
            ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        )
        response = await client.subscribe(node("web-1"), ENDPOINT, [CLUSTER])
        await client.answer(response, error="bad\nendpoints")
        await client.barrier()
        code = await asyncio.to_thread(main, ["config-dump", "web-1", "--admin-address", admin])
        missing = await asyncio.to_thread(main, ["config-dump", "nope", "--admin-address", admin])
        json_code = await asyncio.to_thread(
            main, ["config-dump", "web-1", "--admin-address", admin, "--json"]
        )
        async with httpx.AsyncClient(base_url=f"http://{admin}") as http:
            status = (await http.get("/status")).json()
            described = (await http.get("/describe?host=reviews.default.svc")).json()
            unknown = await http.get("/describe?host=nope.svc")
        described_cli = await asyncio.to_thread(
            main, ["describe", "reviews.default.svc", "--admin-address", admin]
        )
        client.call.cancel()
    out, err = capsys.readouterr()
    assert code == 0
    text = out.split("{", 1)[0].split("host:", 1)[0]
    assert text == (
        f"node web-1 (from control plane at {admin})\n"
        "TYPE  NAME                                VERSION  STATUS  ERROR\n"
        "EDS   outbound|8080||reviews.default.svc  1        NACKED"
        "  (rejected version 1) bad endpoints\n"
    )
    assert '"address": "10.0.0.1"' in out  # the --json dump carries the resource itself
    assert json_code == 0
    assert missing == 1
    assert "no connected client has node id 'nope' (connected: web-1)" in err
    [cluster] = described["clusters"]
    assert [e["address"] for e in cluster["endpoints"]] == ["10.0.0.1:8080"]
    assert (unknown.status_code, described_cli) == (404, 0)
    assert "cluster:     outbound|8080||reviews.default.svc (ROUND_ROBIN)\n" in out
    [record] = status["clients"]
    assert record["spiffe"] == "spiffe://cluster.local/ns/shop/sa/web"


def test_convergence_round_measures_from_the_first_change_until_every_ack() -> None:
    now = [0.0]
    metrics = ControlPlaneMetrics(clock=lambda: now[0])
    metrics.config_pushed(0.0, [("a", "EDS"), ("b", "EDS")])
    now[0] = 0.5
    metrics.config_pushed(0.5, [("a", "CDS")])  # joins the open round
    metrics.acked("a", "EDS")
    metrics.acked("b", "EDS")
    assert metrics.convergence.count == 0
    now[0] = 0.75
    metrics.acked("a", "CDS")
    assert (metrics.convergence.count, metrics.last_convergence) == (1, 0.75)
    now[0] = 1.0
    metrics.config_pushed(1.0, [("a", "EDS")])
    metrics.stream_closed("a")  # gone before ACKing: the round is incomplete
    assert (metrics.convergence.count, metrics.incomplete_rounds) == (1, 1)
    metrics.config_pushed(1.0, [])  # nothing to push: no round at all
    assert (metrics.convergence.count, metrics.incomplete_rounds) == (1, 1)
    assert metrics.push_duration.count == 4


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram(buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert h.lines("x") == [
        'x_bucket{le="0.1"} 2',
        'x_bucket{le="1"} 3',
        'x_bucket{le="+Inf"} 4',
        "x_sum 3.65",
        "x_count 4",
    ]


def test_workers_metrics_add_up_through_json() -> None:
    """The leader's page with ADS workers: each worker's export() crosses a
    pipe as JSON; counters and histograms add up, the last convergence is
    the slowest worker's, and the leader's own figures are not changed."""
    now = [0.0]

    def worker(pushes: int, converged_after: float, nack: bool) -> dict[str, Any]:
        metrics = ControlPlaneMetrics(clock=lambda: now[0])
        for _ in range(pushes):
            metrics.pushed("RDS")
        now[0] = 0.0
        metrics.config_pushed(0.0, [("s", "RDS")])
        now[0] = converged_after
        if nack:
            metrics.nacked("s", "RDS", "RDS")
        else:
            metrics.acked("s", "RDS")
        exported: dict[str, Any] = json.loads(json.dumps(metrics.export()))
        return exported

    leader = ControlPlaneMetrics()
    leader.config_rejected()
    total = leader.merged([worker(3, 0.2, False), worker(5, 0.7, False), worker(1, 9.0, True)])
    assert total.pushes == {"RDS": 9}
    assert total.nacks == {"RDS": 1}
    assert (total.convergence.count, total.last_convergence) == (2, 0.7)
    assert total.convergence.total == pytest.approx(0.9)
    assert (total.push_duration.count, total.incomplete_rounds) == (3, 1)
    assert total.rejected_reloads == 1
    assert (leader.pushes, leader.convergence.count) == ({}, 0)
