"""Issue 6's differential test: the same AuthorizationPolicies, the same requests,
decided by grpcio's native xDS server (RBAC filters from our control plane,
gRFC A41) and by the library's policy engine (a PolicySet built from the
InboundListener our XdsClient gets with `watch_inbound`). They must agree on
every case.

Istio's documented examples, in one namespace: deny by path prefix, allow by
principal, allow by namespace, allow by header + method (POST: the only method
gRPC has), and an AUDIT policy (a LOG engine: never decides). Callers are
three mTLS identities; each calls a matrix of methods with and without a
header. JWT-based rules are left out: gRPC has no jwt_authn and its RBAC
`metadata` never matches (A41), so it cannot take part.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from meshlab import LocalMesh
from test_security_xds import (  # procs and xds_server_port: fixtures
    fetch_credentials,
    grpc_env,
    procs,
    spawn,
    start_xds_server,
    xds_server_port,  # noqa: F401
)

from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.policy import InboundRequest, PolicySet
from proxyless_mesh.xds_client import XdsClient

pytestmark = pytest.mark.interop

__all__ = ["procs"]  # the fixture, shared with test_security_xds

HOST = "greeter.shop.mesh"
CALLERS = {"frontend": ("web", "frontend"), "other": ("web", "other"), "ops": ("admin", "ops")}
PATHS = (
    "/greeter.Greeter/SayHello",
    "/greeter.Greeter/Admin",
    "/admin.Admin/Reset",
    "/public.Public/Get",
    "/other.Other/Call",
)
HEADERS: tuple[tuple[tuple[str, str], ...], ...] = ((), (("x-token", "letmein"),))

SERVER = """
import sys, grpc
from concurrent import futures

class Any(grpc.GenericRpcHandler):
    def service(self, details):
        return grpc.unary_unary_rpc_method_handler(lambda request, context: b"ok")

server = grpc.server(futures.ThreadPoolExecutor(4), xds=True)
server.add_generic_rpc_handlers((Any(),))
creds = grpc.xds_server_credentials(grpc.insecure_server_credentials())
server.add_secure_port(sys.argv[1], creds)
server.start()
print("started", flush=True)
sys.stdin.read()
server.stop(0)
"""

CLIENT = """
import json, sys, grpc, grpc.experimental
paths, headers = PATHS_JSON, HEADERS_JSON
creds = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
out = {}
with grpc.secure_channel(sys.argv[1], creds) as channel:
    for path in paths:
        for hdrs in headers:
            try:
                channel.unary_unary(path)(b"x", timeout=30, wait_for_ready=True,
                                          metadata=[tuple(h) for h in hdrs])
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            out[path + "|" + json.dumps(hdrs)] = code
print(json.dumps(out), flush=True)
"""


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }


def config(port: int) -> str:
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
        policy(
            "deny-admin-service",
            {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin.Admin/*"]}}]}]},
        ),
        policy(
            "deny-greeter-admin-unless-ops",
            {
                "action": "DENY",
                "rules": [
                    {
                        "from": [{"source": {"notNamespaces": ["admin"]}}],
                        "to": [{"operation": {"paths": ["*/Admin"]}}],
                    }
                ],
            },
        ),
        policy(
            "allow-frontend",
            {
                "rules": [
                    {
                        "from": [{"source": {"principals": ["cluster.local/ns/web/sa/frontend"]}}],
                        "to": [{"operation": {"paths": ["/greeter.Greeter/*"]}}],
                    }
                ]
            },
        ),
        policy("audit-everything", {"action": "AUDIT", "rules": [{}]}),  # gRPC ignores LOG (A41)
        policy(
            "allow-admin-namespace", {"rules": [{"from": [{"source": {"namespaces": ["admin"]}}]}]}
        ),
        policy(
            "allow-public-with-token",
            {
                "rules": [
                    {
                        "to": [{"operation": {"methods": ["POST"], "paths": ["/public.Public/*"]}}],
                        "when": [{"key": "request.headers[x-token]", "values": ["letmein"]}],
                    }
                ]
            },
        ),
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


async def library_policy(bootstrap: Path, port: int) -> PolicySet:
    """The server's policy as the library gets it: watch_inbound on its listener."""
    name = f"grpc/server?xds.resource.listening_address=127.0.0.1:{port}"
    client = XdsClient(Bootstrap.from_file(bootstrap), on_update=lambda state: None)
    await client.start()
    try:
        await client.watch_inbound([name], timeout=20)
        inbound = client.state.inbound[name]
    finally:
        await client.close()
    return PolicySet(inbound.rbac, inbound.jwt)


async def test_grpc_server_and_library_decide_alike(
    lab: LocalMesh,
    procs: list[subprocess.Popen[str]],
    tmp_path: Path,
    xds_server_port: int,  # noqa: F811
) -> None:
    port = xds_server_port
    lab.write_config("policies.yaml", config(port))
    lab.start_control_plane()
    server_boot = lab.bootstrap(
        "rbac-server",
        "shop",
        "greeter",
        token=lab.token("shop", "greeter"),
        credentials_dir=tmp_path / "server-certs",
    )
    await fetch_credentials(server_boot)
    start_xds_server(procs, server_boot, tmp_path / "server.log", port, SERVER)

    grpc_codes: dict[tuple[str, str, str], str] = {}
    for caller, (namespace, account) in CALLERS.items():
        boot = lab.bootstrap(
            f"rbac-{caller}",
            namespace,
            account,
            token=lab.token(namespace, account),
            credentials_dir=tmp_path / f"{caller}-certs",
        )
        await fetch_credentials(boot)
        log = tmp_path / f"{caller}.log"
        script = CLIENT.replace("PATHS_JSON", json.dumps(PATHS)).replace(
            "HEADERS_JSON", json.dumps(HEADERS)
        )
        proc = spawn(procs, script, f"xds:///{HOST}:50051", grpc_env(boot), log)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        out = proc.stdout.readline()
        assert out, log.read_text()[-3000:]
        for key, code in json.loads(out).items():
            path, headers = key.split("|", 1)
            grpc_codes[(caller, path, headers)] = code
    assert len(grpc_codes) == len(CALLERS) * len(PATHS) * len(HEADERS)

    policies = await library_policy(server_boot, port)
    library_codes = {}
    for caller, (namespace, account) in CALLERS.items():
        for path in PATHS:
            for headers in HEADERS:
                request = InboundRequest(
                    method="POST",
                    target=path.encode(),
                    headers={
                        ":authority": f"{HOST}:50051",
                        "content-type": "application/grpc",
                        **dict(headers),
                    },
                    peer_principal=f"spiffe://cluster.local/ns/{namespace}/sa/{account}",
                    destination_port=port,
                )
                allowed = policies.check(request).allowed
                key = (caller, path, json.dumps([list(h) for h in headers]))
                library_codes[key] = "OK" if allowed else "PERMISSION_DENIED"
    assert library_codes == grpc_codes
    # The matrix is not trivial: both outcomes occur, for every caller.
    for caller in CALLERS:
        outcomes = {code for (who, _, _), code in grpc_codes.items() if who == caller}
        assert outcomes == {"OK", "PERMISSION_DENIED"}, (caller, outcomes)
