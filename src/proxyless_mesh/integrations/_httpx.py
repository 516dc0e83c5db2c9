"""httpx transports that route requests through the mesh.

`MeshTransport` / `AsyncMeshTransport` wrap an inner httpx transport (by
default httpx's own). A request to a mesh service is routed, balanced, and
handed to the inner transport with the chosen endpoint's address in the URL;
the Host header still names the service, as it would through a sidecar.
Anything else passes through untouched (outbound policy ALLOW_ANY).

The request's URL is restored after the call, so `response.request.url` is
what the caller asked for, not the endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from proxyless_mesh._outbound import UNRESOLVED, plan
from proxyless_mesh.errors import ServiceResolutionError
from proxyless_mesh.model import Endpoint

if TYPE_CHECKING:
    from proxyless_mesh.mesh import Mesh

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _fast_url_ok() -> bool:
    """httpx.URL keeps its parts in a NamedTuple; replacing host and port
    there is ~10x cheaper than URL.copy_with(), which re-parses the URL. Use it
    only when this httpx has that shape."""
    try:
        ref = httpx.URL("http://a:1/p")._uri_reference
        return hasattr(ref, "_replace") and ref.host == "a" and ref.port == 1
    except AttributeError:
        return False


_FAST_URL = _fast_url_ok()


def _url_parts(url: httpx.URL) -> tuple[str, str]:
    """(authority as `host:port`, path without query) of a request URL."""
    if _FAST_URL:
        ref: Any = url._uri_reference
        port = ref.port or _DEFAULT_PORTS.get(ref.scheme, 80)
        return f"{ref.host}:{port}", ref.path or "/"
    port = url.port or _DEFAULT_PORTS.get(url.scheme, 80)
    return f"{url.host}:{port}", url.raw_path.split(b"?", 1)[0].decode("ascii") or "/"


def _endpoint_url(url: httpx.URL, endpoint: Endpoint) -> httpx.URL:
    if _FAST_URL:
        new = httpx.URL.__new__(httpx.URL)
        ref: Any = url._uri_reference
        new._uri_reference = ref._replace(host=endpoint.address, port=endpoint.port)
        return new
    return url.copy_with(host=endpoint.address, port=endpoint.port)


def _unresolved(mesh: Mesh, authority: str, request: httpx.Request) -> ServiceResolutionError:
    return ServiceResolutionError(
        f"could not learn whether {authority} is a mesh service: "
        f"no answer from the control plane ({mesh.control_plane}) "
        f"within {mesh.resolve_timeout:g}s",
        request=request,
    )


def _decide(mesh: Mesh, request: httpx.Request, authority: str, path: str) -> Any:
    return plan(
        mesh.snapshot,
        authority,
        path,
        request.method,
        request.headers.get,
        outbound_policy=mesh.outbound_policy,
        request=request,
    )


def _resolved(target: Any, mesh: Mesh, authority: str, request: httpx.Request) -> Endpoint | None:
    """The target after one resolution attempt; still unknown is an error."""
    if target is UNRESOLVED:
        raise _unresolved(mesh, authority, request)
    return target  # type: ignore[no-any-return]


class MeshTransport(httpx.BaseTransport):
    """Sync httpx transport: `httpx.Client(transport=mesh.httpx_transport())`."""

    def __init__(self, mesh: Mesh, inner: httpx.BaseTransport | None = None) -> None:
        self._mesh = mesh
        self._inner = inner if inner is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        mesh = self._mesh
        url = request.url
        authority, path = _url_parts(url)
        target = _decide(mesh, request, authority, path)
        if target is UNRESOLVED:
            mesh.resolve_blocking(authority)
            target = _resolved(_decide(mesh, request, authority, path), mesh, authority, request)
        if target is None:
            return self._inner.handle_request(request)
        request.url = _endpoint_url(url, target)
        try:
            return self._inner.handle_request(request)
        finally:
            request.url = url

    def close(self) -> None:
        self._inner.close()


class AsyncMeshTransport(httpx.AsyncBaseTransport):
    """Async httpx transport: `httpx.AsyncClient(transport=mesh.async_httpx_transport())`."""

    def __init__(self, mesh: Mesh, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._mesh = mesh
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        mesh = self._mesh
        url = request.url
        authority, path = _url_parts(url)
        target = _decide(mesh, request, authority, path)
        if target is UNRESOLVED:
            await mesh.resolve_async(authority)
            target = _resolved(_decide(mesh, request, authority, path), mesh, authority, request)
        if target is None:
            return await self._inner.handle_async_request(request)
        request.url = _endpoint_url(url, target)
        try:
            return await self._inner.handle_async_request(request)
        finally:
            request.url = url

    async def aclose(self) -> None:
        await self._inner.aclose()
