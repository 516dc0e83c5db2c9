"""The snapshot's inbound half: a PolicySet per server listener, compiled
when the listener changed and reused otherwise; and the mesh's provider
semantics (absent: the workload's passthrough, not usable: deny) and TLS
mode per port."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.errors import MeshError
from proxyless_mesh.model import INBOUND_PASSTHROUGH, InboundListener, Rbac, RbacAction, TlsMode
from proxyless_mesh.policy import InboundRequest
from proxyless_mesh.registration import Registration
from proxyless_mesh.snapshot import build_snapshot
from proxyless_mesh.xds_client import XdsState

NAME = "grpc/server?xds.resource.listening_address=127.0.0.1:8080"
DENY_ALL = (Rbac(RbacAction.ALLOW),)  # an ALLOW engine with no policy denies everything


def _state(*listeners: InboundListener, absent: frozenset[str] = frozenset()) -> XdsState:
    return XdsState(
        inbound=MappingProxyType({lst.name: lst for lst in listeners}), absent_listeners=absent
    )


def _listener(rbac: tuple[Rbac, ...] = (), mode: TlsMode = TlsMode.STRICT) -> InboundListener:
    return InboundListener(NAME, "127.0.0.1", 8080, tls_mode=mode, rbac=rbac)


def _status(policies: object) -> int:
    request = InboundRequest("GET", b"/api", {"host": "x"})
    return policies.check(request).status  # type: ignore[attr-defined,no-any-return]


def test_a_policy_set_is_compiled_per_listener_and_reused_while_unchanged() -> None:
    first = build_snapshot(_state(_listener(DENY_ALL)))
    assert _status(first.inbound[NAME].policies) == 403
    # An unrelated update (a new but equal listener object): same compiled set.
    again = build_snapshot(_state(_listener(DENY_ALL)), first)
    assert again.inbound[NAME].policies is first.inbound[NAME].policies
    # The policy changed: recompiled, and the new decision applies.
    changed = build_snapshot(_state(_listener(())), again)
    assert changed.inbound[NAME].policies is not first.inbound[NAME].policies
    assert _status(changed.inbound[NAME].policies) == 200
    # The listener went away: no entry.
    assert NAME not in build_snapshot(_state(absent=frozenset({NAME})), changed).inbound


def _mesh() -> Mesh:
    return Mesh(
        Bootstrap.from_json(
            '{"xds_servers": [{"server_uri": "127.0.0.1:1",'
            ' "channel_creds": [{"type": "insecure"}]}]}'
        )
    )


def test_the_mesh_provider_follows_the_snapshot() -> None:
    mesh = _mesh()
    with pytest.raises(MeshError, match="serve_inbound"):
        mesh.inbound_policies(8080)
    mesh._inbound_names[8080] = NAME  # what serve_inbound records
    provider = mesh.inbound_policies(8080)
    assert _status(provider()) == 403  # watched, nothing arrived yet: fail closed
    mesh.snapshot = build_snapshot(_state(absent=frozenset({NAME})), mesh.snapshot)
    assert _status(provider()) == 503  # undeclared, the passthrough not here yet
    both = frozenset({NAME, INBOUND_PASSTHROUGH})
    mesh.snapshot = build_snapshot(_state(absent=both), mesh.snapshot)
    assert _status(provider()) == 200  # a control plane that sends no passthrough
    mesh.snapshot = build_snapshot(_state(_listener(DENY_ALL)), mesh.snapshot)
    assert _status(provider()) == 403  # the operator's policy, read per call
    assert mesh.inbound_listener(8080) == _listener(DENY_ALL)


def _passthrough(rbac: tuple[Rbac, ...], mode: TlsMode) -> InboundListener:
    return InboundListener(INBOUND_PASSTHROUGH, "0.0.0.0", 15006, tls_mode=mode, rbac=rbac)


def test_an_undeclared_port_enforces_the_workload_passthrough() -> None:
    """No listener for the port (nothing declares it): the PeerAuthentication
    and AuthorizationPolicies the control plane sent for the workload itself
    (namespace, labels) apply, as Istio's inbound passthrough chain does."""
    mesh = _mesh()
    mesh._identity_config = object()  # type: ignore[assignment]  # "has an identity"
    mesh._inbound_names[8080] = NAME
    provider = mesh.inbound_policies(8080)
    state = _state(_passthrough(DENY_ALL, TlsMode.STRICT), absent=frozenset({NAME}))
    mesh.snapshot = build_snapshot(state, mesh.snapshot)
    assert _status(provider()) == 403
    assert mesh.inbound_tls_mode(8080) is TlsMode.STRICT
    # The port gets declared: its own listener wins.
    mesh.snapshot = build_snapshot(
        _state(_listener(mode=TlsMode.PERMISSIVE), _passthrough(DENY_ALL, TlsMode.STRICT)),
        mesh.snapshot,
    )
    assert _status(provider()) == 200
    assert mesh.inbound_tls_mode(8080) is TlsMode.PERMISSIVE


def test_inbound_tls_mode_comes_from_the_listener_when_the_mesh_has_an_identity() -> None:
    mesh = _mesh()
    mesh._inbound_names[8080] = NAME
    mesh.snapshot = build_snapshot(_state(_listener(mode=TlsMode.STRICT)))
    assert mesh.inbound_tls_mode(8080) is TlsMode.DISABLE  # no identity: plaintext only
    mesh._identity_config = object()  # type: ignore[assignment]  # "has an identity"
    assert mesh.inbound_tls_mode(8080) is TlsMode.STRICT
    assert mesh.inbound_tls_mode(9090) is TlsMode.PERMISSIVE  # not followed: Istio's default


def test_listener_names_follow_the_bootstrap_template() -> None:
    mesh = _mesh()
    mesh.bootstrap = Bootstrap.from_json(
        '{"xds_servers": [{"server_uri": "127.0.0.1:1",'
        ' "channel_creds": [{"type": "insecure"}]}],'
        ' "server_listener_resource_name_template":'
        ' "grpc/server?xds.resource.listening_address=%s"}'
    )
    assert mesh.inbound_listener_name(8080, "127.0.0.1") == NAME
    assert mesh.inbound_listener_name(80, "::").endswith("=[::]:80")


def test_a_port_being_registered_answers_503_until_its_listener_arrives() -> None:
    registration = Registration(group="shop/reviews", ports={"http": 8080})
    mesh = Mesh(_mesh().bootstrap, register=registration)
    mesh._inbound_names[8080] = NAME
    provider = mesh.inbound_policies(8080)
    mesh.snapshot = build_snapshot(_state(absent=frozenset({NAME})), mesh.snapshot)
    registration._arriving.add(8080)  # Register sent, its listener not followed yet
    assert _status(provider()) == 503  # not unchecked, and retriable by clients
    mesh.snapshot = build_snapshot(_state(_listener(DENY_ALL)), mesh.snapshot)
    assert _status(provider()) == 403  # arrived: the operator's policy
    registration._arriving.discard(8080)  # the registration settled
    absent = frozenset({NAME, INBOUND_PASSTHROUGH})  # and no passthrough either
    mesh.snapshot = build_snapshot(_state(absent=absent), mesh.snapshot)
    assert _status(provider()) == 200  # absent for good: nothing selects this server


def test_the_503_reaches_asgi_and_wsgi_callers_with_its_reason() -> None:
    import asyncio

    from proxyless_mesh.integrations._asgi import AuthorizationMiddleware
    from proxyless_mesh.integrations._wsgi import WsgiAuthorizationMiddleware
    from proxyless_mesh.policy import NOT_READY_BODY, PolicySet

    awaiting = PolicySet.awaiting()
    decision = awaiting.check(InboundRequest("GET", b"/api", {"host": "x"}))
    assert (decision.status, decision.allowed) == (503, False)

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("the app must not run")

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "raw_path": b"/api", "path": "/api",
             "query_string": b"", "headers": [(b"host", b"x")], "scheme": "http"}  # fmt: skip
    asgi = AuthorizationMiddleware(app, policies=lambda: awaiting)
    asyncio.run(asgi(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 503 and sent[1]["body"] == NOT_READY_BODY

    statuses: list[str] = []

    def wsgi_app(environ: object, start_response: object) -> list[bytes]:
        raise AssertionError("the app must not run")

    wsgi = WsgiAuthorizationMiddleware(wsgi_app, policies=lambda: awaiting)  # type: ignore[arg-type]
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api", "QUERY_STRING": "",
               "HTTP_HOST": "x", "wsgi.url_scheme": "http"}  # fmt: skip
    body = wsgi(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["503 Service Unavailable"] and list(body) == [NOT_READY_BODY]


def test_the_503_reaches_grpc_callers_as_unavailable() -> None:
    from types import SimpleNamespace

    import grpc

    from proxyless_mesh.integrations._grpc_server import AuthorizationServerInterceptor
    from proxyless_mesh.policy import PolicySet

    class Context:
        def abort(self, code: grpc.StatusCode, message: str) -> None:
            raise RuntimeError(code, message)

        def auth_context(self) -> dict[str, object]:
            return {}

        def peer(self) -> str:
            return "ipv4:127.0.0.1:40000"

    def unary(request: bytes, context: object) -> bytes:
        raise AssertionError("the handler must not run")

    interceptor = AuthorizationServerInterceptor(
        policies=PolicySet.awaiting, peer_principal=lambda context: None
    )
    details = SimpleNamespace(method="/shop.Reviews/Get", invocation_metadata=())
    guarded = interceptor.intercept_service(
        lambda d: grpc.unary_unary_rpc_method_handler(unary),
        details,  # type: ignore[arg-type]
    )
    assert guarded is not None
    with pytest.raises(RuntimeError) as refused:
        guarded.unary_unary(b"", Context())
    assert refused.value.args == (grpc.StatusCode.UNAVAILABLE, "inbound policy not received yet")
