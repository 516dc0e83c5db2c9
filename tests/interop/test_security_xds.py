"""grpcio's own xDS client and xDS server talk mutual TLS (gRFC A29) from the
security intent our control plane sends, with certificates the library keeps.

Real processes: the control plane (with its CA), a `grpc.server(xds=True)`
with `xds_server_credentials`, and an `xds:///` channel with
`xds_channel_credentials`, both falling back to insecure only when xDS says
nothing. The certificates come from the library's IdentityManager, fetched
with join tokens into each workload's credentials_dir (the file_watcher
provider "default" of its bootstrap). Proof of mTLS: the server sees the
client's SPIFFE ID in its auth context, and a plaintext client is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshlab import LocalMesh
from processes import envoy_binary, reserved_port, stop
from test_envoy import envoy_bootstrap
from test_policies_accepted import assert_all_acked, client_types

from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.security import IdentityConfig, IdentityManager

pytestmark = pytest.mark.interop

HOST = "greeter.shop.mesh"
CLIENT_ID = "spiffe://cluster.local/ns/web/sa/frontend"

# An xDS-enabled grpcio server that answers with what it knows of its peer.
SERVER = """
import json, sys, grpc
from concurrent import futures

def hello(request, context):
    auth = {k: [v.decode() for v in vs] for k, vs in context.auth_context().items()}
    ids = [i.decode() for i in (context.peer_identities() or [])]
    return json.dumps({"auth": auth, "peer_identities": ids}).encode()

server = grpc.server(futures.ThreadPoolExecutor(4), xds=True)
handler = grpc.method_handlers_generic_handler(
    "greeter.Greeter", {"SayHello": grpc.unary_unary_rpc_method_handler(hello)}
)
server.add_generic_rpc_handlers((handler,))
creds = grpc.xds_server_credentials(grpc.insecure_server_credentials())
server.add_secure_port(sys.argv[1], creds)
server.start()
print("started", flush=True)
sys.stdin.read()
server.stop(0)
"""

# grpcio's xDS client; stays open (reading stdin) so the control plane keeps its record.
CLIENT = """
import sys, grpc, grpc.experimental
creds = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
with grpc.secure_channel(sys.argv[1], creds) as channel:
    hello = channel.unary_unary("/greeter.Greeter/SayHello")
    print(hello(b"hi", timeout=30, wait_for_ready=True).decode(), flush=True)
    sys.stdin.read()
"""

PLAINTEXT_CLIENT = """
import sys, grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    try:
        channel.unary_unary("/greeter.Greeter/SayHello")(b"hi", timeout=5)
        print("OK")
    except grpc.RpcError as exc:
        print(exc.code().name)
"""


@pytest.fixture
def xds_server_port() -> Iterator[int]:
    """The xDS server's port, held for it (processes.reserved_port): the config
    names it before the server starts, as gRPC asks for its listener by IP:PORT."""
    with reserved_port() as port:
        yield port


def start_xds_server(
    procs: list[subprocess.Popen[str]], bootstrap: Path, log: Path, port: int, script: str = SERVER
) -> subprocess.Popen[str]:
    """`script` (it prints `started` once serving) on 127.0.0.1:`port`."""
    server = spawn(procs, script, f"127.0.0.1:{port}", grpc_env(bootstrap), log)
    assert server.stdout is not None and server.stdout.readline().strip() == "started"
    return server


def security_config(port: int) -> str:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "greeter", "namespace": "shop"},
            "spec": {
                "resolution": "STATIC",
                "location": "MESH_INTERNAL",
                "hosts": [HOST],
                "ports": [{"number": 50051, "name": "grpc", "protocol": "GRPC"}],
                "endpoints": [
                    {"address": "127.0.0.1", "ports": {"grpc": port}, "serviceAccount": "greeter"}
                ],
            },
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "shop"},
            "spec": {"mtls": {"mode": "STRICT"}},
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "frontend-only", "namespace": "shop"},
            "spec": {
                "action": "ALLOW",
                "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/web/sa/*"]}}]}],
            },
        },
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


async def fetch_credentials(bootstrap: Path) -> None:
    """The library's IdentityManager writes cert/key/roots into credentials_dir."""
    manager = IdentityManager(IdentityConfig.from_bootstrap(Bootstrap.from_file(bootstrap)))
    try:
        await manager.start()
    finally:
        await manager.close()


def grpc_env(bootstrap: Path) -> dict[str, str]:
    return {
        **os.environ,
        "GRPC_XDS_BOOTSTRAP": str(bootstrap),
        "GRPC_XDS_EXPERIMENTAL_SECURITY_SUPPORT": "true",
        "GRPC_XDS_EXPERIMENTAL_RBAC": "true",
    }


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for proc in started:  # closing stdin is their signal to stop
            stop(proc, grace=5, ask=lambda p: p.stdin.close() if p.stdin else None)


def spawn(
    procs: list[subprocess.Popen[str]], script: str, arg: str, env: dict[str, str], log: Path
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, arg],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        env=env,
        text=True,
    )
    procs.append(proc)
    return proc


async def test_grpc_native_client_and_server_talk_mtls(
    lab: LocalMesh, procs: list[subprocess.Popen[str]], tmp_path: Path, xds_server_port: int
) -> None:
    port = xds_server_port
    lab.write_config("security.yaml", security_config(port))
    lab.start_control_plane()
    server_boot = lab.bootstrap(
        "grpc-server",
        "shop",
        "greeter",
        token=lab.token("shop", "greeter"),
        credentials_dir=tmp_path / "server-certs",
    )
    client_boot = lab.bootstrap(
        "grpc-client",
        "web",
        "frontend",
        token=lab.token("web", "frontend"),
        credentials_dir=tmp_path / "client-certs",
    )
    await fetch_credentials(server_boot)
    await fetch_credentials(client_boot)

    server = start_xds_server(procs, server_boot, tmp_path / "server.log", port)
    seen = mtls_call(procs, client_boot, tmp_path / "client.log")
    # The server saw the client's verified identity: the call went over mTLS.
    assert seen["auth"].get("transport_security_type") == ["tls"], seen
    assert seen["peer_identities"] == [CLIENT_ID], seen
    assert seen["auth"].get("peer_spiffe_id") == [CLIENT_ID], sorted(seen["auth"])
    client_types_seen = wait_all_acked(lab, "grpc-client")
    assert set(client_types_seen) == {"LDS", "RDS", "CDS", "EDS"}
    server_types = wait_all_acked(lab, "grpc-server")
    # The server asks only for its listener: the routes are inline (gRFC A36).
    assert set(server_types) == {"LDS"}
    assert server_types["LDS"]["subscribed"] == [
        f"grpc/server?xds.resource.listening_address=127.0.0.1:{port}"
    ]

    # Envoy follows the same config (security kinds included) and ACKs all four types.
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(envoy_bootstrap(int(lab.xds_address.rsplit(":", 1)[1]))))
    envoy = subprocess.Popen(
        [envoy_binary(), "-c", str(config), "--disable-hot-restart", "-l", "warning"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "envoy.log").open("w"),
        text=True,
    )
    try:
        assert_all_acked(lab, "envoy-1")
    finally:
        stop(envoy)

    # STRICT: a plaintext client is refused at the handshake.
    plain = subprocess.run(
        [sys.executable, "-c", PLAINTEXT_CLIENT, f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert plain.stdout.strip() == "UNAVAILABLE", plain.stdout
    # ...refused, not crashed: the server is alive and still answers mTLS.
    assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
    again = mtls_call(procs, client_boot, tmp_path / "client-after.log")
    assert again["peer_identities"] == [CLIENT_ID], again


def mtls_call(procs: list[subprocess.Popen[str]], bootstrap: Path, log: Path) -> dict[str, Any]:
    """One call by CLIENT (grpcio's xDS client, mTLS from xDS): what the server saw."""
    client = spawn(procs, CLIENT, f"xds:///{HOST}:50051", grpc_env(bootstrap), log)
    assert client.stdout is not None
    line = client.stdout.readline()
    assert line, log.read_text()[-3000:]
    seen: dict[str, Any] = json.loads(line)
    return seen


def wait_all_acked(lab: LocalMesh, node_id: str) -> dict[str, Any]:
    """Every type the node subscribed to is ACKed at the version sent, none NACKed."""
    deadline = time.monotonic() + 20
    while True:
        types = client_types(lab, node_id) or {}
        nacked = {k: v["error"] for k, v in types.items() if v["nacked"] is not None}
        assert not nacked, nacked
        if types and all(v["acked"] and v["acked"] == v["sent"] for v in types.values()):
            return types
        assert time.monotonic() < deadline, types
        time.sleep(0.05)
