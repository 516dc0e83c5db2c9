"""The admin HTTP endpoint, over real sockets: the generic JSON server, and the
control plane's /healthz, /status and /config_dump with a real ADS client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from mesh_control_plane.admin import JsonHttpServer
from mesh_control_plane.app import ControlPlane
from mesh_control_plane.translate import LISTENER

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

BAD_YAML = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: broken
  namespace: default
spec:
  resolution: STATIC
  location: MESH_INTERNAL
  hosts: [broken.default.svc]
  frobnicate: true
  ports:
  - {number: 80, name: http, protocol: HTTP}
"""


@pytest.fixture
async def json_server() -> AsyncIterator[str]:
    server = JsonHttpServer({"/hello": lambda: {"hello": ["world"]}})
    port = await server.start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}"
    await server.stop()


async def test_json_server_serves_get_and_refuses_the_rest(json_server: str) -> None:
    async with httpx.AsyncClient(base_url=json_server) as http:
        ok = await http.get("/hello?verbose=1")
        assert (ok.status_code, ok.json()) == (200, {"hello": ["world"]})
        assert ok.headers["content-type"] == "application/json"
        missing = await http.get("/nope")
        assert missing.status_code == 404
        assert missing.json()["endpoints"] == ["/hello"]
        assert (await http.post("/hello", content=b"")).status_code == 405


async def test_json_server_answers_garbage_with_400(json_server: str) -> None:
    port = int(json_server.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"garbage\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, str, str]]:
    (tmp_path / "services.yaml").write_text(SERVICE_YAML)
    plane = ControlPlane(tmp_path, poll_interval=0.02)
    addresses = await plane.start("127.0.0.1:0", "127.0.0.1:0")
    yield plane, addresses.xds, f"http://{addresses.admin}"
    await plane.stop(grace=0)


async def test_status_shows_connected_client_and_its_nack(
    plane: tuple[ControlPlane, str, str],
) -> None:
    _, xds, admin = plane
    async with grpc.aio.insecure_channel(xds) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        node = base_pb2.Node(id="web-1", user_agent_name="proxyless-mesh")
        await call.write(
            discovery_pb2.DiscoveryRequest(
                node=node, type_url=LISTENER, resource_names=["reviews.default.svc:8080"]
            )
        )
        response = await asyncio.wait_for(call.read(), 5)
        await call.write(
            discovery_pb2.DiscoveryRequest(
                type_url=LISTENER,
                resource_names=["reviews.default.svc:8080"],
                version_info=response.version_info,
                response_nonce=response.nonce,
                error_detail=status_pb2.Status(code=3, message="no thanks"),
            )
        )
        # Barrier: a new subscription is answered only after the NACK was handled.
        await call.write(discovery_pb2.DiscoveryRequest(type_url=LISTENER, resource_names=["x:1"]))
        await asyncio.wait_for(call.read(), 5)

        async with httpx.AsyncClient(base_url=admin) as http:
            status = (await http.get("/status")).json()
        call.cancel()

    assert status["version"] == "1"
    assert status["config_errors"] == status["config_problems"] == []
    [client] = status["clients"]
    assert (client["node_id"], client["kind"], client["user_agent"]) == (
        "web-1",
        "MESH",
        "proxyless-mesh",
    )
    assert client["types"]["LDS"] == {
        "subscribed": ["x:1"],
        "sent": "1",
        "acked": "",
        "nacked": "1",
        "error": "no thanks",
    }
    # the console's "last seen": the NACK and the barrier came after the connection
    assert client["connected_at"] <= client["last_seen"] <= time.time()


async def test_healthz_and_config_dump(plane: tuple[ControlPlane, str, str]) -> None:
    async with httpx.AsyncClient(base_url=plane[2]) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        dump = (await http.get("/config_dump")).json()
    assert (dump["version"], dump["kind"]) == ("1", "MESH")
    listener = dump["resources"]["LDS"]["reviews.default.svc:8080"]
    assert listener["name"] == "reviews.default.svc:8080"
    hcm = listener["api_listener"]["api_listener"]
    assert hcm["@type"].endswith("HttpConnectionManager")
    assert list(dump["resources"]["EDS"]) == ["outbound|8080||reviews.default.svc"]


async def test_bad_reload_is_reported_and_last_good_kept(
    tmp_path: Path,
) -> None:
    reported: asyncio.Queue[list[str]] = asyncio.Queue()
    (tmp_path / "services.yaml").write_text(SERVICE_YAML)
    plane = ControlPlane(
        tmp_path, poll_interval=0.02, on_config_error=lambda p: reported.put_nowait(list(p))
    )
    addresses = await plane.start("127.0.0.1:0", "127.0.0.1:0")
    try:
        (tmp_path / "bad.yaml").write_text(BAD_YAML)
        problems = await asyncio.wait_for(reported.get(), 10)
        assert any("bad.yaml" in p and "frobnicate" in p for p in problems)
        async with httpx.AsyncClient(base_url=f"http://{addresses.admin}") as http:
            status = (await http.get("/status")).json()
        assert status["version"] == "1"
        assert status["config_errors"] == problems
        # the same problems by their parts, for the console's config errors panel
        assert {
            "file": "bad.yaml",
            "kind": "ServiceEntry",
            "name": "default/broken",
            "field": "spec.frobnicate",
            "message": "unknown field",
            "code": "IST0106",
            "line": None,
        } in status["config_problems"]
        assert len(status["config_problems"]) == len(problems)
        assert "reviews.default.svc:8080" in (await http_dump(addresses.admin))["LDS"]
    finally:
        await plane.stop(grace=0)


async def http_dump(admin: str) -> dict[str, dict[str, object]]:
    async with httpx.AsyncClient(base_url=f"http://{admin}") as http:
        resources: dict[str, dict[str, object]] = (await http.get("/config_dump")).json()[
            "resources"
        ]
        return resources
