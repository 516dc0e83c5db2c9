"""TLS origination from library-mode gRPC channels, end to end on 127.0.0.1.

Two gRPC servers with real TLS outside the mesh (their own CA; the second
demands a client certificate); ServiceEntries declare them on a GRPC port and
DestinationRules originate TLS. The mesh client has no mesh identity. Where
the rule's names are the SNI's, the sub-channel is grpcio's own TLS
(`ssl_channel_credentials`, the SNI as `ssl_target_name_override`); where the
rule names other subjectAltNames, the in-process bridge sends the SNI and
checks those names. A server whose certificate does not match is never
called (UNAVAILABLE)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_support import PrivateCa, origination_files, tls_rule
from meshlab import LocalMesh

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap

METHOD = "/echo.Echo/Who"
PORT = 50051
API = "api.grpc.test"
MTLS = "mtls.grpc.test"


def _who(request: bytes, context: grpc.ServicerContext) -> bytes:
    """The client certificate's common name, or "none"; and what was asked."""
    names = (context.auth_context() or {}).get("x509_common_name") or [b"none"]
    return bytes(names[0]) + b" " + request


@contextlib.contextmanager
def tls_grpc_server(ca: PrivateCa, host: str, client_ca: PrivateCa | None) -> Iterator[int]:
    cert, key, _ = ca.server_pair(host)
    credentials = grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=client_ca.cert_pem if client_ca else None,
        require_client_auth=client_ca is not None,
    )
    server = grpc.server(futures.ThreadPoolExecutor(4))
    handler = grpc.method_handlers_generic_handler(
        "echo.Echo", {"Who": grpc.unary_unary_rpc_method_handler(_who)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait(5)


def _entry(host: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": host.split(".")[0]},
        "spec": {
            "hosts": [host],
            "location": "MESH_EXTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": PORT, "name": "grpc", "protocol": "GRPC"}],
            "endpoints": [{"address": "127.0.0.1", "ports": {"grpc": port}}],
        },
    }


@pytest.fixture
def mesh(lab: LocalMesh, tmp_path: Path) -> Iterator[Mesh]:
    server_ca, client_ca, simple, mutual = origination_files(tmp_path)
    with (
        tls_grpc_server(server_ca, API, None) as api,
        tls_grpc_server(server_ca, MTLS, client_ca) as mtls,
    ):
        docs = [
            _entry(API, api),
            tls_rule(API, simple),  # grpcio's TLS: the SNI is the host
            _entry(MTLS, mtls),
            tls_rule(MTLS, mutual),  # grpcio's TLS with the client certificate
            _entry("names.grpc.test", api),  # the bridge: names other than the SNI
            tls_rule("names.grpc.test", {**simple, "sni": "any.test", "subjectAltNames": [API]}),
            _entry("wrong.grpc.test", api),  # the bridge: the certificate lacks x.test
            tls_rule("wrong.grpc.test", {**simple, "sni": API, "subjectAltNames": ["x.test"]}),
            _entry("other.grpc.test", api),  # grpcio: the certificate lacks the SNI name
            tls_rule("other.grpc.test", simple),
        ]
        lab.write_config("grpc-external.yaml", "\n---\n".join(json.dumps(d) for d in docs))
        lab.start_control_plane()
        bootstrap = Bootstrap.from_file(lab.bootstrap("client-1", "shop", "client"))
        with Mesh(bootstrap) as started:
            assert not started.mtls  # origination needs no mesh identity
            yield started


def test_library_grpc_originates_tls_by_the_destination_rules(mesh: Mesh) -> None:
    def call(host: str) -> bytes:
        with mesh.grpc_channel(f"{host}:{PORT}") as channel:
            return bytes(channel.unary_unary(METHOD)(b"hi", timeout=10))

    assert call(API) == b"none hi"  # SIMPLE: the server's CA trusted, no client certificate
    assert call(MTLS) == b"client.shop hi"  # MUTUAL: the server got the rule's certificate
    assert call("names.grpc.test") == b"none hi"  # the rule's subjectAltNames, not the SNI
    for refused in ("wrong.grpc.test", "other.grpc.test"):
        with pytest.raises(grpc.RpcError) as caught:
            call(refused)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, refused


async def test_aio_channels_originate_tls_too(mesh: Mesh) -> None:
    channel = mesh.aio_grpc_channel(f"{MTLS}:{PORT}")
    try:
        assert await channel.unary_unary(METHOD)(b"aio", timeout=10) == b"client.shop aio"
    finally:
        await channel.close()
