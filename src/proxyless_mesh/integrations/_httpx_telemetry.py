"""Telemetry glue for the httpx mesh transports (source reporter).

The transports call `client_call()` when a request arrives, hand the Call to
the Exchange (which reports routing and each try), and finish with
`responded()` or `raised()`. A response is recorded when its body is closed,
so duration and `istio_response_bytes` cover the body, as Envoy's do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import httpx

from proxyless_mesh.errors import MeshRequestError
from proxyless_mesh.integrations._http_server_telemetry import log_extra
from proxyless_mesh.telemetry import (
    LOCAL_REPLY_STATUS,
    Call,
    QuietCall,
    Telemetry,
    hook_failed,
)

if TYPE_CHECKING:
    from proxyless_mesh.model import Cluster


def client_call(
    telemetry: Telemetry, request: httpx.Request, authority: str
) -> Call | QuietCall | None:
    """A source-reporter Call for a meshed httpx request (None when off)."""
    call = telemetry.client_call(request.method, authority, request.url.path)
    if call is None or isinstance(call, QuietCall):
        return call
    if isinstance(request.stream, httpx.ByteStream):
        call.request_bytes = len(request.content)
    else:
        length = request.headers.get("content-length")
        call.request_bytes = int(length) if length is not None and length.isdigit() else 0
    if "grpc" in request.headers.get("content-type", ""):
        call.protocol = "grpc"
    call.request_header = request.headers.get
    if call.logged:
        call.request_id = request.headers.get("x-request-id") or ""
        call.log_extra = log_extra(request.headers.get, None, None)
    return call


def routed(
    call: Call | QuietCall, route_name: str, cluster_name: str, cluster: Cluster | None
) -> None:
    """The request was routed to `cluster_name` (its TLS says mTLS or not)."""
    if isinstance(call, QuietCall):
        return
    tls = cluster.tls if cluster is not None else None
    principal = ""
    if tls is not None and len(tls.expected_spiffe_ids) == 1:
        principal = tls.expected_spiffe_ids[0]
    call.routed(route_name, cluster_name, tls is not None, principal)


def responded(call: Call | QuietCall, response: httpx.Response) -> httpx.Response:
    """Record the response when its body is closed (now, if it already is)."""
    if isinstance(call, QuietCall) or call.done:  # nothing to record, or passed through
        return response
    if call.idle:  # nothing would be recorded: leave the body unwrapped
        call.done = True
        return response
    try:
        call.peer_from_response(response.headers.get)
        version = response.extensions.get("http_version")
        if isinstance(version, bytes):
            call.http_version = version.decode("ascii", "replace")
        flags: tuple[str, ...] = response.extensions.get("mesh_response_flags", ())
        grpc_status = None
        if call.protocol == "grpc":
            raw = response.headers.get("grpc-status")
            grpc_status = int(raw) if raw is not None and raw.isdigit() else None
        if response.is_closed:
            call.response_bytes = len(response.content)
            call.finish(response.status_code, flags, grpc_status=grpc_status)
            return response
        response.stream = _Metered(response.stream, call, response.status_code, flags, grpc_status)
    except Exception as exc:  # telemetry never breaks a request
        hook_failed(call.telemetry, exc)
    return response


def raised(call: Call | QuietCall, exc: BaseException) -> None:
    """The request ended in an exception: a mesh failure carries its flags."""
    if isinstance(call, QuietCall):
        return
    if isinstance(exc, MeshRequestError):
        flags = exc.flags or (exc.response_flag,)
        flag = exc.response_flag or (flags[0] if flags else "")
        call.finish(LOCAL_REPLY_STATUS.get(flag, 503), flags, error=flag or type(exc).__name__)
    else:
        call.finish(0, (), error=type(exc).__name__)


# Header pairs as httpx keeps them (raw name, lower-case name, value) and
# their lower-case names, made once per distinct tuple (one per Telemetry: its
# peer headers); None when they are not ASCII (then the public API sets them).
_Prepared = tuple[tuple[tuple[bytes, bytes, bytes], ...], frozenset[bytes]]
_PREPARED: dict[tuple[tuple[str, str], ...], _Prepared | None] = {}


def _prepared(pairs: tuple[tuple[str, str], ...]) -> _Prepared | None:
    if pairs in _PREPARED:
        return _PREPARED[pairs]
    prepared: _Prepared | None
    try:
        encoded = tuple(
            (name.encode("ascii"), name.lower().encode("ascii"), value.encode("ascii"))
            for name, value in pairs
        )
        prepared = encoded, frozenset(lower for _, lower, _ in encoded)
    except UnicodeEncodeError:
        prepared = None
    if len(_PREPARED) >= 64:
        _PREPARED.clear()
    _PREPARED[pairs] = prepared
    return prepared


def add_headers(
    headers: httpx.Headers, pairs: tuple[tuple[str, str], ...]
) -> tuple[tuple[bytes, bytes, bytes], ...] | None:
    """Set `pairs` on `headers` as `headers[name] = value` would, in one step;
    the items appended, for `take_back()`, or None when the public API set them.

    `Headers.__setitem__` encodes, lower-cases and scans every header per
    call (~0.7 µs each); the peer headers go on every request, so when none
    of them is there yet (the usual first try) their prepared encoding is
    appended to the header list httpx keeps, as its constructor does. If
    httpx ever keeps headers differently, or a name is already present (a
    retry), the public API does it.
    """
    prepared = _PREPARED.get(pairs) or _prepared(pairs)
    items = getattr(headers, "_list", None)
    if prepared is not None and type(items) is list:
        encoded, names = prepared
        for item in items:
            if item[1] in names:
                break
        else:
            items.extend(encoded)
            return encoded
    for name, value in pairs:
        headers[name] = value
    return None


def take_back(headers: httpx.Headers, added: tuple[tuple[bytes, bytes, bytes], ...]) -> None:
    """Remove what `add_headers` appended once the request is sent, if still
    last: the application's request shows the headers the mesh put on the wire
    no more than Envoy's would (and httpx's cookie jar, which copies every
    request header after each response, need not copy them)."""
    items = getattr(headers, "_list", None)
    count = len(added)
    if (
        type(items) is list
        and len(items) >= count
        and items[-1] is added[-1]
        and items[-count] is added[0]
    ):
        del items[-count:]


def raw_header(headers: httpx.Headers, name: bytes) -> str | None:
    """`headers.get(name)` for a lower-case ASCII name whose values are ASCII
    (grpc-status), read from the header list httpx keeps: `Headers.get` first
    decodes every header of a new response to choose their encoding."""
    items = getattr(headers, "_list", None)
    if type(items) is not list:
        public: str | None = headers.get(name.decode("ascii"))
        return public
    values = [value for _, key, value in items if key == name]
    if not values:
        return None
    return b", ".join(values).decode("latin-1")


def passthrough(call: Call | QuietCall) -> None:
    """Not a mesh request after all: nothing is recorded (no span was opened)."""
    call.done = True


class _Metered(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Counts body bytes and finishes the Call when the body is closed."""

    def __init__(
        self,
        inner: httpx.SyncByteStream | httpx.AsyncByteStream,
        call: Call,
        status: int,
        flags: tuple[str, ...],
        grpc_status: int | None,
    ) -> None:
        self._inner = inner
        self._call = call
        self._status = status
        self._flags = flags
        self._grpc_status = grpc_status
        self._count = 0

    def __iter__(self) -> Iterator[bytes]:
        inner = self._inner
        if not isinstance(inner, httpx.SyncByteStream):
            raise RuntimeError("Attempted to call a sync iterator on an async stream.")
        for chunk in inner:
            self._count += len(chunk)
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        inner = self._inner
        if not isinstance(inner, httpx.AsyncByteStream):
            raise RuntimeError("Attempted to call an async iterator on a sync stream.")
        async for chunk in inner:
            self._count += len(chunk)
            yield chunk

    def _finish(self) -> None:
        call = self._call
        call.response_bytes = self._count
        call.finish(self._status, self._flags, grpc_status=self._grpc_status)

    def close(self) -> None:
        try:
            if isinstance(self._inner, httpx.SyncByteStream):
                self._inner.close()
        finally:
            self._finish()

    async def aclose(self) -> None:
        try:
            if isinstance(self._inner, httpx.AsyncByteStream):
                await self._inner.aclose()
        finally:
            self._finish()
