"""gRPC through the mesh in library mode: the mesh routes and balances every
call over per-endpoint sub-channels (sync and asyncio channels)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from meshlab import LocalMesh

from proxyless_mesh import Mesh, MeshRpcError

HOST = "greeter.default.mesh"
TARGET = f"{HOST}:50051"
METHOD = "/greeter.Greeter/SayHello"
N = 1000
# 1,000 calls at 80/20: sigma of the v2 share is 1.26 points; 6 points ~ 4.7 sigma.
TOLERANCE = 0.06


@pytest.fixture
def greeter(lab: LocalMesh) -> Iterator[LocalMesh]:
    v1 = lab.start_grpc_backend("greeter", "v1")
    v2 = lab.start_grpc_backend("greeter", "v2")
    lab.deploy_versions(HOST, 50051, {"v1": v1, "v2": v2}, {"v1": 80, "v2": 20}, protocol="GRPC")
    lab.start_control_plane()
    yield lab


def test_sync_channel_follows_80_20_split(greeter: LocalMesh) -> None:
    with (
        Mesh.from_bootstrap(greeter.bootstrap("grpc-lib")) as mesh,
        mesh.grpc_channel(TARGET) as channel,
    ):
        say_hello = channel.unary_unary(METHOD)
        counts = Counter(say_hello(b"hi", timeout=10).decode() for _ in range(N))
        _reply, call = say_hello.with_call(b"hi", timeout=10)
        assert call.code() == grpc.StatusCode.OK
    assert set(counts) == {"greeter/v1", "greeter/v2"}
    assert abs(counts["greeter/v2"] / N - 0.20) < TOLERANCE, counts


async def test_aio_channel_follows_80_20_split(greeter: LocalMesh) -> None:
    async with Mesh.from_bootstrap(greeter.bootstrap("grpc-aio")) as mesh:
        channel = mesh.aio_grpc_channel(TARGET)
        say_hello = channel.unary_unary(METHOD)
        # The first call is made before the target was ever resolved.
        counts = Counter([(await say_hello(b"hi", timeout=10)).decode()])
        for _ in range(N - 1):
            counts[(await say_hello(b"hi", timeout=10)).decode()] += 1
        await channel.close()
    assert abs(counts["greeter/v2"] / N - 0.20) < TOLERANCE, counts


def test_metadata_routes_and_unmatched_calls_are_unavailable(greeter: LocalMesh) -> None:
    greeter.write_config(
        "route.yaml",
        json.dumps(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "greeter", "namespace": "default"},
                "spec": {
                    "hosts": [HOST],
                    "http": [
                        {
                            "match": [{"headers": {"x-user": {"exact": "jason"}}}],
                            "route": [{"destination": {"host": HOST, "subset": "v2"}}],
                        },
                        {
                            "match": [{"uri": {"prefix": "/greeter.Greeter/"}}],
                            "route": [{"destination": {"host": HOST, "subset": "v1"}}],
                        },
                    ],
                },
            }
        ),
    )
    with Mesh.from_bootstrap(greeter.bootstrap("grpc-lib")) as mesh:
        channel = mesh.grpc_channel(TARGET)
        say_hello = channel.unary_unary(METHOD)
        # The watcher may still be loading the new route: wait for it to apply.
        deadline_calls = 200
        while say_hello(b"hi", metadata=[("x-user", "jason")], timeout=10) != b"greeter/v2":
            deadline_calls -= 1
            assert deadline_calls > 0, "the header route never applied"
        assert {say_hello(b"hi", metadata=[("x-user", "jason")]) for _ in range(50)} == {
            b"greeter/v2"
        }
        assert {say_hello(b"hi") for _ in range(50)} == {b"greeter/v1"}
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/other.Service/Call")(b"hi")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert isinstance(info.value, MeshRpcError) and info.value.response_flag == "NR"
        assert ("x-mesh-response-flags", "NR") in info.value.trailing_metadata()
        channel.close()
