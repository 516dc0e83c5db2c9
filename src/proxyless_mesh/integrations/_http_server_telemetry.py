"""Inbound HTTP telemetry (destination reporter): ASGI and WSGI middleware.

Separate from the authorization middleware on purpose: wrap the app as
`TelemetryMiddleware(AuthorizationMiddleware(app, ...), telemetry=...)` so
refused requests (403/401) are counted and logged too, and either can be
used without the other. The server span is made current while the app
runs, so the app's own outbound mesh calls become its children.

`service` names the destination service for the labels; without it, the
request's Host (port dropped) is used, bounded by the label-set guard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from opentelemetry import context as otel_context

from proxyless_mesh.integrations._asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    tls_peer_principal,
)
from proxyless_mesh.integrations._dry_run import CARRIER_KEY, report_dry_run
from proxyless_mesh.integrations._wsgi import PEER_PRINCIPAL_KEY, Environ, StartResponse, WSGIApp
from proxyless_mesh.telemetry import PEER_HEADER, Call, Telemetry, hook_failed


def _start(call: Call, service: str | None, principal: str | None) -> None:
    if service:
        call.service = service
    if principal:
        call.peer_principal = principal
        call.secure = True


def _grpc_status(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


class TelemetryMiddleware:
    """Pure ASGI middleware recording every HTTP request it serves."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        telemetry: Telemetry,
        service: str | None = None,
        peer_principal: Callable[[Scope], str | None] = tls_peer_principal,
    ) -> None:
        self.app = app
        self.telemetry = telemetry
        self._service = service
        self._peer_principal = peer_principal
        self._peer_headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in telemetry.peer_headers
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for key, value in scope.get("headers") or ():
            headers[key.decode("latin-1").lower()] = value.decode("latin-1")
        authority = headers.get("host") or _server(scope)
        call = self.telemetry.call(
            "destination", "http", scope.get("method", "GET"), authority, scope.get("path", "/")
        )
        if call is None:
            await self.app(scope, receive, send)
            return
        try:
            if "grpc" in headers.get("content-type", ""):
                call.protocol = "grpc"
            call.http_version = f"HTTP/{scope.get('http_version', '1.1')}"
            _start(call, self._service, self._peer_principal(scope))
            if call.logged:
                call.log_extra = log_extra(
                    headers.get, _address(scope.get("client")), _address(scope.get("server"))
                )
        except Exception as exc:  # telemetry never breaks a request
            hook_failed(self.telemetry, exc)
        ctx = call.start_server_span(headers.get, scope.get("scheme", "http"))
        answer_peer = PEER_HEADER in headers and self.telemetry.exchange_peers
        state: dict[str, Any] = {"status": 0, "grpc": None}

        async def counted_receive() -> Message:
            message = await receive()
            if message.get("type") == "http.request":
                call.request_bytes += len(message.get("body") or b"")
            return message

        async def observed_send(message: Message) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                state["status"] = message.get("status", 0)
                if answer_peer:
                    message = dict(message)
                    message["headers"] = [*message.get("headers", ()), *self._peer_headers]
            elif kind == "http.response.body":
                call.response_bytes += len(message.get("body") or b"")
            elif kind == "http.response.trailers":
                for key, value in message.get("headers", ()):
                    if key.lower() == b"grpc-status":
                        state["grpc"] = _grpc_status(value.decode("latin-1"))
            await send(message)

        token = otel_context.attach(ctx) if ctx is not None else None
        try:
            try:
                await self.app(scope, counted_receive, observed_send)
            finally:
                if (shadow := scope.get(CARRIER_KEY)) is not None:  # a dry-run policy saw it
                    report_dry_run(self.telemetry, call, shadow)
        except BaseException as exc:
            call.finish(state["status"] or 500, error=type(exc).__name__)
            raise
        finally:
            if token is not None:
                otel_context.detach(token)
        call.finish(state["status"], grpc_status=state["grpc"])


def log_extra(
    get_header: Callable[[str], str | None], remote: str | None, local: str | None
) -> dict[str, str]:
    """The access-log operators only the inbound side knows."""
    extra: dict[str, str] = {}
    for operator, header in (
        ("REQ(USER-AGENT)", "user-agent"),
        ("REQ(X-FORWARDED-FOR)", "x-forwarded-for"),
    ):
        value = get_header(header)
        if value:
            extra[operator] = value
    if remote:
        extra["DOWNSTREAM_REMOTE_ADDRESS"] = remote
    if local:
        extra["DOWNSTREAM_LOCAL_ADDRESS"] = local
        extra["UPSTREAM_HOST"] = local  # the app, as an inbound sidecar's upstream
    return extra


def _address(pair: Any) -> str | None:
    return f"{pair[0]}:{pair[1]}" if pair else None


def _server(scope: Scope) -> str:
    server = scope.get("server")
    return f"{server[0]}:{server[1]}" if server else ""


class WsgiTelemetryMiddleware:
    """WSGI middleware recording every request it serves; the request is
    recorded when the server closes the response iterable (so the body's
    size and time are in)."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        telemetry: Telemetry,
        service: str | None = None,
        peer_principal_key: str = PEER_PRINCIPAL_KEY,
    ) -> None:
        self.app = app
        self.telemetry = telemetry
        self._service = service
        self._key = peer_principal_key

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        authority = environ.get("HTTP_HOST") or (
            f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
        )
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        call = self.telemetry.call(
            "destination", "http", environ.get("REQUEST_METHOD", "GET"), authority, path or "/"
        )
        if call is None:
            return self.app(environ, start_response)

        def get_header(name: str) -> str | None:
            value = environ.get("HTTP_" + name.upper().replace("-", "_"))
            return value if isinstance(value, str) else None

        try:
            principal = environ.get(self._key)
            _start(call, self._service, principal if isinstance(principal, str) else None)
            length = environ.get("CONTENT_LENGTH") or ""
            call.request_bytes = int(length) if length.isdigit() else 0
            call.http_version = str(environ.get("SERVER_PROTOCOL", "HTTP/1.1"))
            if call.logged:
                remote = environ.get("REMOTE_ADDR")
                call.log_extra = log_extra(
                    get_header,
                    f"{remote}:{environ.get('REMOTE_PORT', 0)}" if remote else None,
                    f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}",
                )
        except Exception as exc:  # telemetry never breaks a request
            hook_failed(self.telemetry, exc)
        answer_peer = get_header(PEER_HEADER) is not None and self.telemetry.exchange_peers
        peer_headers = self.telemetry.peer_headers
        ctx = call.start_server_span(get_header, environ.get("wsgi.url_scheme", "http"))
        status = [0]

        def observed_start(status_line: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            head = status_line.split(" ", 1)[0]
            status[0] = int(head) if head.isdigit() else 0
            if answer_peer:
                headers = [*headers, *peer_headers]
            return start_response(status_line, headers, *exc)

        token = otel_context.attach(ctx) if ctx is not None else None
        try:
            try:
                body = self.app(environ, observed_start)
            finally:
                if (shadow := environ.get(CARRIER_KEY)) is not None:  # a dry-run policy saw it
                    report_dry_run(self.telemetry, call, shadow)
        except BaseException as exc:
            call.finish(status[0] or 500, error=type(exc).__name__)
            raise
        finally:
            if token is not None:
                otel_context.detach(token)
        return _Body(body, call, status)


class _Body:
    """The app's iterable, counted; finishing the Call on close()."""

    def __init__(self, inner: Iterable[bytes], call: Call, status: list[int]) -> None:
        self._inner = inner
        self._call = call
        self._status = status

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._call.response_bytes += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._call.finish(self._status[0])
