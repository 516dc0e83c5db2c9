"""Inbound authorization as WSGI middleware.

Same decision core as the ASGI middleware. The raw request target is taken
from `RAW_URI` (gunicorn) or `REQUEST_URI` when the server provides it,
else rebuilt from the already-decoded `SCRIPT_NAME + PATH_INFO`; the app then
gets `PATH_INFO` (and `RAW_URI`/`REQUEST_URI`) rewritten to the normalized
path the policy judged. A normalized path that leaves the app's
`SCRIPT_NAME` mount is refused with 400, since the app could not serve it
as the policy saw it.

The peer identity is read from `environ[peer_principal_key]`, which only the
server side can set (clients reach `environ` solely through `HTTP_*` keys):
the mTLS serving helper puts the verified SPIFFE ID there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from proxyless_mesh.integrations._dry_run import record_dry_run
from proxyless_mesh.integrations._ext_authz import ExtAuthzClient
from proxyless_mesh.policy import (
    BAD_REQUEST_BODY,
    REFUSAL_BODIES,
    Decision,
    InboundRequest,
    PolicySet,
    after_verdict,
    app_path,
)

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

PEER_PRINCIPAL_KEY = "proxyless_mesh.peer_principal"
_STATUS = {
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    503: "503 Service Unavailable",
}
_PATH_SAFE = "/!$&'()*+,;=:@-._~"
_PHRASES = frozenset(s.value for s in HTTPStatus)


class WsgiAuthorizationMiddleware:
    """WSGI middleware enforcing the current `PolicySet` from `policies()`."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        policies: Callable[[], PolicySet],
        peer_principal_key: str = PEER_PRINCIPAL_KEY,
        destination_port: int | None = None,
        ext_authz: ExtAuthzClient | None = None,
    ) -> None:
        self.app = app
        self._policies = policies
        self._key = peer_principal_key
        self._port = destination_port
        self._ext_authz = ext_authz

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        policies, request = self._policies(), self._request(environ)
        decision = policies.check(request)
        if decision.ext_authz is not None:  # a CUSTOM policy matched: its authorizer first
            if self._ext_authz is None:
                self._ext_authz = ExtAuthzClient()
            verdict = self._ext_authz.check(decision.ext_authz, request, decision)
            if not verdict.allowed:
                reason = HTTPStatus(verdict.status).phrase if verdict.status in _PHRASES else ""
                headers = [*verdict.client_headers, ("Content-Length", str(len(verdict.body)))]
                start_response(f"{verdict.status} {reason}".rstrip(), headers)
                return [verdict.body]
            decision = after_verdict(policies, request, verdict)
        record_dry_run(decision, environ)
        if not decision.allowed:
            body = REFUSAL_BODIES[decision.status]
            headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
            if decision.status == 400:  # the server's framing of what follows is suspect
                headers.append(("Connection", "close"))
            start_response(_STATUS[decision.status], headers)
            return [body]
        script = environ.get("SCRIPT_NAME", "")
        decoded = app_path(decision.path).decode("latin-1")
        if script and not (decoded == script or decoded.startswith(script.rstrip("/") + "/")):
            start_response(_STATUS[400], [("Content-Type", "text/plain")])
            return [BAD_REQUEST_BODY]
        return self.app(_rewritten(environ, decision, decoded[len(script) :]), start_response)

    def _request(self, environ: Environ) -> InboundRequest:
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if raw:  # as received; an absolute-form target is reduced by the policy's hygiene
            target = raw.encode("latin-1")
        else:
            path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
            target = quote(path.encode("latin-1"), safe=_PATH_SAFE).encode("ascii")
            query = environ.get("QUERY_STRING", "")
            if query:
                target += b"?" + query.encode("latin-1")
        headers: dict[str, str] = {}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                headers[key[5:].replace("_", "-").lower()] = value
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").lower()] = environ[key]
        port = self._port
        if port is None and str(environ.get("SERVER_PORT", "")).isdigit():
            port = int(environ["SERVER_PORT"])
        principal = environ.get(self._key)
        return InboundRequest(
            method=environ.get("REQUEST_METHOD", "GET"),
            target=target,
            headers=headers,
            peer_principal=principal if isinstance(principal, str) else None,
            source_ip=environ.get("REMOTE_ADDR"),
            destination_port=port,
            scheme=environ.get("wsgi.url_scheme", "http"),
            http_version=environ.get("SERVER_PROTOCOL", "HTTP/1.1").removeprefix("HTTP/"),
        )


def _rewritten(environ: Environ, decision: Decision, path_info: str) -> Environ:
    new = dict(environ)
    new["PATH_INFO"] = path_info
    new["QUERY_STRING"] = decision.query
    raw = decision.path + ("?" + decision.query if decision.query else "")
    for key in ("RAW_URI", "REQUEST_URI"):
        if key in new:
            new[key] = raw
    if decision.authority is not None:  # absolute-form target: its authority is the Host
        new["HTTP_HOST"] = decision.authority
    for name in decision.remove_headers:
        new.pop("HTTP_" + name.upper().replace("-", "_"), None)
    for name, value in decision.add_headers:
        new["HTTP_" + name.upper().replace("-", "_")] = value.encode("utf-8").decode("latin-1")
    return new
