"""AuthorizationPolicy CUSTOM: the mesh config's extension providers, through
the control plane's xDS and the library's decoder, enforced by the ASGI and
WSGI middleware against real external authorizers on 127.0.0.1:0 (an HTTP
server speaking Envoy's HTTP ext_authz shape, and a gRPC
`envoy.service.auth.v3.Authorization/Check` server), allowing by a header."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import textwrap
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
import yaml
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from mesh_control_plane.config import ConfigLoadError, parse_documents
from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import LISTENER, ClientKind, NodeInfo, translate

from proxyless_mesh.integrations import (
    AioAuthorizationServerInterceptor,
    AuthorizationMiddleware,
    AuthorizationServerInterceptor,
    WsgiAuthorizationMiddleware,
)
from proxyless_mesh.model import InboundListener, RbacAction
from proxyless_mesh.policy import PolicySet
from proxyless_mesh.xds_client import decode_listener

LABELS = (("app", "httpbin"),)
SERVER = "grpc/server?xds.resource.listening_address=10.0.0.1:8000"
CHECKED: list[dict[str, Any]] = []  # what the HTTP authorizer was asked
SLOW_RELEASE = threading.Event()


class _HttpAuthorizer(BaseHTTPRequestHandler):
    """Istio's sample ext-authz, HTTP side: allow when `x-ext-authz: allow`."""

    def do_GET(self) -> None:
        CHECKED.append(
            {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        )
        allowed = self.headers.get("x-ext-authz") == "allow"
        body = b"" if allowed else b"denied by ext_authz"
        if self.headers.get("x-ext-authz") == "slow":
            SLOW_RELEASE.wait(10)  # answers only once the test has seen the timeout
        crashed = self.headers.get("x-ext-authz") == "crash"
        self.send_response(500 if crashed else 200 if allowed else 403)
        self.send_header("x-ext-authz-check-result", "allowed" if allowed else "denied")
        self.send_header("x-not-listed", "never forwarded")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        pass


class _GrpcAuthorizer(external_auth_pb2_grpc.AuthorizationServicer):
    def Check(self, request: Any, context: Any) -> Any:
        headers = request.attributes.request.http.headers
        response = external_auth_pb2.CheckResponse()
        if headers.get("x-ext-authz") == "allow":
            response.status.code = code_pb2.OK
            added = response.ok_response.headers.add().header
            added.key, added.value = "x-ext-authz-check-result", "allowed"
        else:
            response.status.code = code_pb2.PERMISSION_DENIED
            response.denied_response.status.code = 401  # type: ignore[assignment]
            response.denied_response.body = "denied by grpc ext_authz"
        return response


@pytest.fixture(scope="module")
def authorizers() -> Iterator[tuple[int, int]]:
    http = ThreadingHTTPServer(("127.0.0.1", 0), _HttpAuthorizer)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_GrpcAuthorizer(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield http.server_address[1], grpc_port
    finally:
        http.shutdown()
        http.server_close()
        thread.join(10)
        server.stop(grace=None).wait(10)


def _free_port() -> int:
    """A port nothing listens on (bound, then closed): the authorizer is down."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SERVICE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: foo}
spec:
  hosts: [httpbin.foo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8000, name: http}]
  endpoints: [{address: 10.0.0.1, serviceAccount: httpbin, labels: {app: httpbin}}]
"""


def _mesh_config(providers: list[dict[str, Any]]) -> str:
    mesh = yaml.safe_dump({"extensionProviders": providers, "accessLogFile": "/dev/stdout"})
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": mesh},
        }
    )


def _custom(provider: str, extra: str = "", path: str = "/headers") -> str:
    return textwrap.dedent(
        f"""
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {{name: ext-authz, namespace: foo{extra}}}
        spec:
          selector: {{matchLabels: {{app: httpbin}}}}
          action: CUSTOM
          provider: {{name: {provider}}}
          rules: [{{to: [{{operation: {{paths: ["{path}"]}}}}]}}]
        """
    )


DENY_ADMIN = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[x-ext-authz-check-result]", values: [allowed]}]}]
"""


def _load(*texts: str) -> MeshConfig:
    docs = [(f"f{i}.yaml", d) for i, t in enumerate(texts) for d in yaml.safe_load_all(t)]
    return parse_documents(docs)


def _policies(config: MeshConfig, kind: ClientKind = ClientKind.MESH) -> PolicySet:
    node = NodeInfo(
        id="httpbin", kind=kind, namespace="foo", service_account="httpbin", labels=LABELS
    )
    rs = translate(config, build_static_registry(config), node)
    listener = decode_listener(rs.resources[LISTENER][SERVER])
    assert isinstance(listener, InboundListener)
    return PolicySet(listener.rbac, listener.jwt)


def _http_provider(port: int, **extra: Any) -> dict[str, Any]:
    spec = {
        "service": "127.0.0.1",
        "port": str(port),
        "includeRequestHeadersInCheck": ["x-ext-authz"],
        "headersToUpstreamOnAllow": ["x-ext-authz-check-result"],
        "headersToDownstreamOnDeny": ["x-ext-authz-check-result"],
        **extra,
    }
    return {"name": "sample-http", "envoyExtAuthzHttp": spec}


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    body = json.dumps({"path": scope["path"], "headers": headers}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _wsgi_echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    headers = {k[5:].lower().replace("_", "-"): v for k, v in environ.items() if k[:5] == "HTTP_"}
    start_response("200 OK", [("content-type", "application/json")])
    return [json.dumps({"path": environ["PATH_INFO"], "headers": headers}).encode()]


def _asgi_get(policies: PolicySet, path: str, headers: dict[str, str]) -> httpx.Response:
    app = AuthorizationMiddleware(_echo, policies=lambda: policies)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://httpbin") as c:
            return await c.get(path, headers=headers)

    return asyncio.run(go())


def _wsgi_get(policies: PolicySet, path: str, headers: dict[str, str]) -> httpx.Response:
    app = WsgiAuthorizationMiddleware(_wsgi_echo, policies=lambda: policies)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://httpbin") as c:
        return c.get(path, headers=headers)


GET = {"asgi": _asgi_get, "wsgi": _wsgi_get}


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_http_provider_decides_what_custom_matches(
    stack: str, authorizers: tuple[int, int]
) -> None:
    http_port, _ = authorizers
    policies = _policies(
        _load(SERVICE, _mesh_config([_http_provider(http_port)]), _custom("sample-http"))
    )
    get = GET[stack]
    CHECKED.clear()
    allowed = get(policies, "/headers?x=1", {"x-ext-authz": "allow", "x-other": "kept back"})
    assert allowed.status_code == 200
    assert allowed.json()["headers"]["x-ext-authz-check-result"] == "allowed"  # upstream on allow
    ((asked,),) = [CHECKED]
    assert asked["path"] == "/headers?x=1"
    assert asked["headers"]["x-ext-authz"] == "allow" and "x-other" not in asked["headers"]
    assert asked["headers"]["host"] == "httpbin"
    denied = get(policies, "/headers", {"x-ext-authz": "deny"})
    assert (denied.status_code, denied.text) == (403, "denied by ext_authz")
    assert denied.headers["x-ext-authz-check-result"] == "denied"  # downstream on deny
    assert "x-not-listed" not in denied.headers
    CHECKED.clear()
    assert get(policies, "/ip", {}).status_code == 200  # no CUSTOM rule: not asked
    assert CHECKED == []


def test_grpc_provider_decides(authorizers: tuple[int, int]) -> None:
    _, grpc_port = authorizers
    provider = {
        "name": "sample-grpc",
        "envoyExtAuthzGrpc": {"service": "127.0.0.1", "port": grpc_port},
    }
    policies = _policies(_load(SERVICE, _mesh_config([provider]), _custom("sample-grpc")))
    for get in GET.values():
        allowed = get(policies, "/headers", {"x-ext-authz": "allow"})
        assert allowed.status_code == 200
        assert allowed.json()["headers"]["x-ext-authz-check-result"] == "allowed"
        denied = get(policies, "/headers", {"x-ext-authz": "deny"})
        assert (denied.status_code, denied.text) == (401, "denied by grpc ext_authz")


@pytest.mark.parametrize("grpc_provider", [False, True])
def test_authorizer_down_fails_closed_unless_fail_open(grpc_provider: bool) -> None:
    port = _free_port()
    kind = "envoyExtAuthzGrpc" if grpc_provider else "envoyExtAuthzHttp"
    for extra, status in (({}, 403), ({"statusOnError": "503"}, 503), ({"failOpen": True}, 200)):
        spec = {"service": "127.0.0.1", "port": port, "timeout": "2s", **extra}
        config = _load(SERVICE, _mesh_config([{"name": "down", kind: spec}]), _custom("down"))
        policies = _policies(config)
        for get in GET.values():
            assert get(policies, "/headers", {"x-ext-authz": "allow"}).status_code == status


def test_custom_comes_before_deny(authorizers: tuple[int, int]) -> None:
    """Istio's order: the authorizer first (its denial is what the client gets),
    then DENY, which sees the headers the authorizer added."""
    http_port, _ = authorizers
    config = _load(
        SERVICE, _mesh_config([_http_provider(http_port)]), _custom("sample-http"), DENY_ADMIN
    )
    policies = _policies(config)
    denied_by_authorizer = _asgi_get(policies, "/headers", {"x-ext-authz": "deny"})
    assert (denied_by_authorizer.status_code, denied_by_authorizer.text) == (
        403,
        "denied by ext_authz",
    )
    denied_after = _asgi_get(policies, "/headers", {"x-ext-authz": "allow"})
    assert (denied_after.status_code, denied_after.text) == (403, "RBAC: access denied")


def test_grpcio_xds_servers_deny_what_custom_matches(authorizers: tuple[int, int]) -> None:
    """grpcio has no ext_authz: its listener denies the CUSTOM rules' requests."""
    http_port, _ = authorizers
    config = _load(SERVICE, _mesh_config([_http_provider(http_port)]), _custom("sample-http"))
    node = NodeInfo(
        id="g", kind=ClientKind.GRPC, namespace="foo", service_account="httpbin", labels=LABELS
    )
    rs = translate(config, build_static_registry(config), node)
    listener = decode_listener(rs.resources[LISTENER][SERVER])
    assert isinstance(listener, InboundListener)
    assert [(e.action, e.ext_authz) for e in listener.rbac] == [(RbacAction.DENY, None)]
    assert [n for n, _ in listener.rbac[0].policies] == [
        "istio-ext-authz-ns[foo]-policy[ext-authz]-rule[0]"
    ]


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ((_custom("nowhere"),), "spec.provider.name: extension provider 'nowhere' is not defined"),
        (
            (
                _mesh_config([_http_provider(1)]),
                _custom("sample-http", ", annotations: {istio.io/dry-run: 'true'}"),
            ),
            "dry-run is supported for ALLOW and DENY policies only",
        ),
        (
            (_mesh_config([_http_provider(1, includeRequestBodyInCheck={"maxRequestBytes": 10})]),),
            "includeRequestBodyInCheck: not supported",
        ),
        (
            (_mesh_config([_http_provider(1, pathPrefix="check")]),),
            "pathPrefix: must start with /",
        ),
        (
            (_mesh_config([_http_provider(1, statusOnError="418")]),),
            "statusOnError: not an HTTP status Envoy knows: '418'",
        ),
    ],
)
def test_mistakes_are_refused_by_field(texts: tuple[str, ...], expected: str) -> None:
    with pytest.raises(ConfigLoadError) as caught:
        _load(SERVICE, *texts)
    found = [str(p) for p in caught.value.problems]
    assert any(expected in p for p in found), found


def test_mesh_fields_not_read_are_warnings() -> None:
    config = _load(SERVICE, _mesh_config([_http_provider(1)]))
    assert [w.field for w in config.warnings] == [
        "data.mesh.accessLogFile",
        "data.mesh.extensionProviders",  # 127.0.0.1 is no ServiceEntry of this config
    ]
    assert "'sample-http': 127.0.0.1 is no ServiceEntry here" in config.warnings[1].message
    assert dict(config.extension_providers)["sample-http"].target == "127.0.0.1:1"


def test_an_authorizer_past_its_timeout_is_an_error(authorizers: tuple[int, int]) -> None:
    http_port, _ = authorizers
    provider = _http_provider(http_port, timeout="0.2s", statusOnError="504")
    policies = _policies(_load(SERVICE, _mesh_config([provider]), _custom("sample-http")))
    SLOW_RELEASE.clear()
    try:
        for get in GET.values():
            assert get(policies, "/headers", {"x-ext-authz": "slow"}).status_code == 504
    finally:
        SLOW_RELEASE.set()


def test_a_5xx_from_the_authorizer_is_an_error(authorizers: tuple[int, int]) -> None:
    """As Envoy's HTTP ext_authz client: statusOnError, not the 5xx itself."""
    http_port, _ = authorizers
    provider = _http_provider(http_port, statusOnError="502")
    policies = _policies(_load(SERVICE, _mesh_config([provider]), _custom("sample-http")))
    for get in GET.values():
        assert get(policies, "/headers", {"x-ext-authz": "crash"}).status_code == 502
        assert get(policies, "/headers", {"x-ext-authz": "no"}).status_code == 403


def _echo_handler(aio: bool) -> grpc.GenericRpcHandler:
    if aio:

        async def unary(request: bytes, context: Any) -> bytes:
            return b"ok"

    else:

        def unary(request: bytes, context: Any) -> bytes:  # type: ignore[misc]
            return b"ok"

    return grpc.method_handlers_generic_handler(
        "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
    )


def test_library_grpc_servers_ask_the_provider(authorizers: tuple[int, int]) -> None:
    """The library's interceptors (sync and aio) ask the authorizer too; its
    denial becomes the gRPC status Envoy maps its HTTP status to."""
    http_port, _ = authorizers
    provider = _http_provider(http_port)
    custom = _custom("sample-http", path="/test.Echo/*")
    policies = _policies(_load(SERVICE, _mesh_config([provider]), custom))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        interceptors=[AuthorizationServerInterceptor(policies=lambda: policies)],
    )
    server.add_generic_rpc_handlers((_echo_handler(aio=False),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Echo/Unary")
            assert call(b"x", metadata=(("x-ext-authz", "allow"),), timeout=10) == b"ok"
            with pytest.raises(grpc.RpcError) as denied:
                call(b"x", metadata=(("x-ext-authz", "no"),), timeout=10)
            assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert denied.value.details() == "denied by ext_authz"
    finally:
        server.stop(grace=None).wait(10)

    async def aio_scenario() -> None:
        aio_server = grpc.aio.server(
            interceptors=[AioAuthorizationServerInterceptor(policies=lambda: policies)]
        )
        aio_server.add_generic_rpc_handlers((_echo_handler(aio=True),))
        aio_port = aio_server.add_insecure_port("127.0.0.1:0")
        await aio_server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{aio_port}") as channel:
                call = channel.unary_unary("/test.Echo/Unary")
                allowed = await call(b"x", metadata=(("x-ext-authz", "allow"),), timeout=10)
                assert allowed == b"ok"
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(b"x", metadata=(("x-ext-authz", "no"),), timeout=10)
                assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        finally:
            await aio_server.stop(grace=None)

    asyncio.run(aio_scenario())


def test_two_providers_on_one_workload_deny_what_custom_matches(
    authorizers: tuple[int, int],
) -> None:
    """Istio allows one provider per workload: with two, fail closed."""
    http_port, grpc_port = authorizers
    grpc_provider = {
        "name": "other",
        "envoyExtAuthzGrpc": {"service": "127.0.0.1", "port": grpc_port},
    }
    second = _custom("other").replace("name: ext-authz,", "name: ext-authz-2,")
    config = _load(
        SERVICE,
        _mesh_config([_http_provider(http_port), grpc_provider]),
        _custom("sample-http"),
        second,
    )
    policies = _policies(config)
    denied = _asgi_get(policies, "/headers", {"x-ext-authz": "allow"})
    assert (denied.status_code, denied.text) == (403, "RBAC: access denied")
    assert _asgi_get(policies, "/ip", {}).status_code == 200
