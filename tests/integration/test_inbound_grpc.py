"""The grpc server interceptors (sync and aio) in a real grpc server on 127.0.0.1.

Denied -> PERMISSION_DENIED, invalid JWT -> UNAUTHENTICATED, allowed calls
reach the handler (unary and server-streaming). The peer identity comes from
a test-only `peer_principal` callable until mTLS lands (plaintext here).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mesh_control_plane.config.authorization import (
    authorization_policies_to_rbac,
    request_authentications_to_jwt,
)

from proxyless_mesh.integrations._grpc_server import (
    AioAuthorizationServerInterceptor,
    AuthorizationServerInterceptor,
)
from proxyless_mesh.policy import PolicySet

ISSUER = "https://issuer.example"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_JWK = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
OPS = "spiffe://cluster.local/ns/ops/sa/operator"

AUTHZ = [
    {
        "metadata": {"name": "grpc", "namespace": "foo"},
        "spec": {
            "rules": [
                {"to": [{"operation": {"paths": ["/pkg.Svc/Public"], "methods": ["POST"]}}]},
                {
                    "from": [{"source": {"requestPrincipals": [f"{ISSUER}/admin"]}}],
                    "to": [{"operation": {"paths": ["/pkg.Svc/*"]}}],
                },
                {
                    "from": [{"source": {"namespaces": ["ops"]}}],
                    "to": [{"operation": {"paths": ["/pkg.Svc/Ops"]}}],
                },
            ]
        },
    }
]
AUTHN = [
    {
        "metadata": {"name": "jwt", "namespace": "foo"},
        "spec": {"jwtRules": [{"issuer": ISSUER, "jwks": json.dumps({"keys": [_JWK]})}]},
    }
]
POLICIES = PolicySet(authorization_policies_to_rbac(AUTHZ), request_authentications_to_jwt(AUTHN))


def _token(**claims: Any) -> str:
    body = {"iss": ISSUER, "sub": "admin", "exp": int(time.time()) + 86400, **claims}
    return jwt.encode(body, KEY, algorithm="RS256")


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _peer(context: Any) -> str | None:
    """Test-only identity: clients that send `x-test-as-ops` are OPS. This stands
    in for the mTLS peer until issue 5 lands; production uses the auth context."""
    return OPS if ("x-test-as-ops", "1") in context.invocation_metadata() else None


def _sync_handlers() -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"ok:" + request

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from (b"a", b"b", b"c")

    return grpc.method_handlers_generic_handler(
        "pkg.Svc",
        {
            "Public": grpc.unary_unary_rpc_method_handler(unary),
            "Secret": grpc.unary_unary_rpc_method_handler(unary),
            "Ops": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )


def _aio_handlers() -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return b"ok:" + request

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for item in (b"a", b"b", b"c"):
            yield item

    return grpc.method_handlers_generic_handler(
        "pkg.Svc",
        {
            "Public": grpc.unary_unary_rpc_method_handler(unary),
            "Secret": grpc.unary_unary_rpc_method_handler(unary),
            "Ops": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )


def _code(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _check_cases(channel: grpc.Channel) -> None:
    unary = lambda m: channel.unary_unary(f"/pkg.Svc/{m}")  # noqa: E731
    assert unary("Public")(b"x", timeout=10) == b"ok:x"
    assert _code(lambda: unary("Secret")(b"x", timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    assert unary("Secret")(b"y", metadata=_auth(_token()), timeout=10) == b"ok:y"
    bad = _auth(_token()[:-4] + "AAAA")
    assert _code(lambda: unary("Secret")(b"x", metadata=bad, timeout=10)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert _code(lambda: unary("Public")(b"x", metadata=bad, timeout=10)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    user = _auth(_token(sub="user"))
    assert _code(lambda: unary("Secret")(b"x", metadata=user, timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    ops = (("x-test-as-ops", "1"),)
    assert unary("Ops")(b"o", metadata=ops, timeout=10) == b"ok:o"
    assert _code(lambda: unary("Ops")(b"o", timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    stream = channel.unary_stream("/pkg.Svc/Stream")
    assert list(stream(b"", metadata=_auth(_token()), timeout=10)) == [b"a", b"b", b"c"]
    assert _code(lambda: list(stream(b"", timeout=10))) == grpc.StatusCode.PERMISSION_DENIED


def test_sync_interceptor() -> None:
    interceptor = AuthorizationServerInterceptor(policies=lambda: POLICIES, peer_principal=_peer)
    server = grpc.server(ThreadPoolExecutor(max_workers=4), interceptors=[interceptor])
    server.add_generic_rpc_handlers((_sync_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            _check_cases(channel)
    finally:
        server.stop(None).wait()


@pytest.mark.asyncio
async def test_aio_interceptor() -> None:
    interceptor = AioAuthorizationServerInterceptor(policies=lambda: POLICIES, peer_principal=_peer)
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((_aio_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            secret = channel.unary_unary("/pkg.Svc/Secret")
            assert await channel.unary_unary("/pkg.Svc/Public")(b"x", timeout=10) == b"ok:x"
            assert await secret(b"y", metadata=_auth(_token()), timeout=10) == b"ok:y"
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await secret(b"x", timeout=10)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert denied.value.details() == "RBAC: access denied"
            with pytest.raises(grpc.aio.AioRpcError) as unauth:
                await secret(b"x", metadata=_auth("a.b.c"), timeout=10)
            assert unauth.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ops = channel.unary_unary("/pkg.Svc/Ops")
            assert await ops(b"o", metadata=(("x-test-as-ops", "1"),), timeout=10) == b"ok:o"
            stream = channel.unary_stream("/pkg.Svc/Stream")
            got = [r async for r in stream(b"", metadata=_auth(_token()), timeout=10)]
            assert got == [b"a", b"b", b"c"]
            with pytest.raises(grpc.aio.AioRpcError) as s_denied:
                _ = [r async for r in stream(b"", timeout=10)]
            assert s_denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await server.stop(None)
