"""Inbound authorization as pure ASGI middleware.

`AuthorizationMiddleware(app, policies=...)` applies RequestAuthentication and
AuthorizationPolicy to every HTTP and WebSocket request (a WebSocket is an
HTTP request first: letting it through unchecked would be a bypass); other
scopes (lifespan) pass through. Refusals are answered directly with a short
body (403 `RBAC: access denied`, 401, 400; a WebSocket is closed with 1008
before accept, which servers turn into a 403).

The app is given the request the policy judged: `path`/`raw_path` rewritten
to the normalized form, an absolute-form target's authority as the Host, the
token header removed unless `forward`, claim headers added. The query string
is kept as received, minus a token parameter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from proxyless_mesh.integrations._dry_run import record_dry_run
from proxyless_mesh.integrations._ext_authz import ExtAuthzClient
from proxyless_mesh.policy import (
    REFUSAL_BODIES,
    AuthzVerdict,
    Decision,
    InboundRequest,
    PolicySet,
    after_verdict,
    app_path,
    join_headers,
    spiffe_id_from_pem,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Path characters an ASGI server may have decoded that are literal in a raw path.
_PATH_SAFE = "/!$&'()*+,;=:@-._~"


def tls_peer_principal(scope: Scope) -> str | None:
    """Default identity source: the ASGI `tls` extension's client certificate
    (the first PEM of `client_cert_chain`), its SPIFFE URI SAN."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or ()
    for pem in chain:
        return spiffe_id_from_pem(pem)
    return None


class AuthorizationMiddleware:
    """ASGI middleware enforcing the current `PolicySet` from `policies()`.

    `peer_principal(scope)` returns the verified SPIFFE ID of the peer
    (default: `tls_peer_principal`); `destination_port` overrides the port
    taken from `scope["server"]`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        policies: Callable[[], PolicySet],
        peer_principal: Callable[[Scope], str | None] = tls_peer_principal,
        destination_port: int | None = None,
        ext_authz: ExtAuthzClient | None = None,
    ) -> None:
        self.app = app
        self._policies = policies
        self._peer_principal = peer_principal
        self._port = destination_port
        self._ext_authz = ext_authz

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        policies, request = self._policies(), self._request(scope)
        decision = policies.check(request)
        if decision.ext_authz is not None:  # a CUSTOM policy matched: its authorizer first
            if self._ext_authz is None:
                self._ext_authz = ExtAuthzClient()
            verdict = await self._ext_authz.check_async(decision.ext_authz, request, decision)
            if not verdict.allowed:
                await _refuse_verdict(kind, verdict, send)
                return
            decision = after_verdict(policies, request, verdict)
        record_dry_run(decision, scope)
        if not decision.allowed:
            await _refuse(kind, decision.status, send)
            return
        await self.app(_rewritten(scope, decision), receive, send)

    def _request(self, scope: Scope) -> InboundRequest:
        raw_path = scope.get("raw_path")
        if raw_path is None:  # optional in the spec: re-encode the decoded path
            raw_path = quote(scope["path"], safe=_PATH_SAFE).encode("ascii")
        query = scope.get("query_string") or b""
        target = raw_path + b"?" + query if query else raw_path
        headers = join_headers(
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        )
        client, server = scope.get("client"), scope.get("server")
        port = self._port if self._port is not None else (server[1] if server else None)
        return InboundRequest(
            method=scope.get("method", "GET"),
            target=target,
            headers=headers,
            peer_principal=self._peer_principal(scope),
            source_ip=client[0] if client else None,
            destination_port=port,
            destination_ip=server[0] if server else None,
            scheme=scope.get("scheme", "http"),
            http_version=scope.get("http_version", "1.1"),
        )


def _rewritten(scope: Scope, decision: Decision) -> Scope:
    new = dict(scope)
    new["raw_path"] = decision.path.encode("ascii")
    new["path"] = app_path(decision.path).decode("utf-8", "replace")
    new["query_string"] = decision.query.encode("ascii")
    if decision.remove_headers or decision.add_headers or decision.authority is not None:
        drop = decision.remove_headers
        if decision.authority is not None:  # absolute-form target: its authority is the Host
            drop = drop | {"host"}
        headers = [(k, v) for k, v in scope["headers"] if k.decode("latin-1").lower() not in drop]
        if decision.authority is not None:
            headers.insert(0, (b"host", decision.authority.encode("ascii")))
        headers.extend((k.encode("latin-1"), v.encode("utf-8")) for k, v in decision.add_headers)
        new["headers"] = headers
    return new


async def _refuse_verdict(kind: str, verdict: AuthzVerdict, send: Send) -> None:
    """The authorizer's denial as it gave it (status, body, allowed headers)."""
    if kind == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in verdict.client_headers]
    headers.append((b"content-length", str(len(verdict.body)).encode()))
    await send({"type": "http.response.start", "status": verdict.status, "headers": headers})
    await send({"type": "http.response.body", "body": verdict.body})


async def _refuse(kind: str, status: int, send: Send) -> None:
    if kind == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = REFUSAL_BODIES[status]
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    if status == 400:  # the server's framing of what follows is not to be trusted
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
