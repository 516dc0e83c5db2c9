"""The request URL's parts the mesh reads, and the URL pointed at an endpoint.

httpx keeps a URL parsed in a NamedTuple (`URL._uri_reference`); when this
httpx has that shape (checked once, `_FAST_URL`), the authority and path are
read from it and an endpoint's URL is that tuple with host and port replaced,
instead of `URL.copy_with()`, which parses the URL again (~20-40 µs).
"""

from __future__ import annotations

from typing import Any

import httpx

from proxyless_mesh.model import Endpoint

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _fast_url_ok() -> bool:
    """httpx.URL keeps its parts in a NamedTuple; replacing host and port
    there is ~10x cheaper than URL.copy_with(), which re-parses the URL. Use it
    only when this httpx has that shape."""
    try:
        ref = httpx.URL("http://a:1/p?q")._uri_reference
        fields = getattr(ref, "_fields", ())
        return (
            isinstance(ref, tuple)
            and "host" in fields
            and "port" in fields
            and ref.host == "a"
            and ref.port == 1
            and ref.query == "q"
        )
    except AttributeError:
        return False


_FAST_URL = _fast_url_ok()
# Where host and port sit in httpx's parsed-URL NamedTuple: the endpoint's URL is
# made as one tuple (NamedTuple._replace goes through a Python map() and _make).
_HOST_AT, _PORT_AT = (
    (httpx.URL("http://a:1/")._uri_reference._fields.index(f) for f in ("host", "port"))
    if _FAST_URL
    else (0, 0)
)


def url_parts(url: httpx.URL) -> tuple[str, str]:
    """(authority as `host:port`, path without query) of a request URL."""
    if _FAST_URL:
        ref: Any = url._uri_reference
        port = ref.port or _DEFAULT_PORTS.get(ref.scheme, 80)
        return f"{ref.host}:{port}", ref.path or "/"
    port = url.port or _DEFAULT_PORTS.get(url.scheme, 80)
    return f"{url.host}:{port}", url.raw_path.split(b"?", 1)[0].decode("ascii") or "/"


def endpoint_url(url: httpx.URL, endpoint: Endpoint, path: str | None = None) -> httpx.URL:
    """`url` pointed at `endpoint`; `path` (with its query) replaces the
    path when the route rewrote it."""
    if _FAST_URL and path is None:
        new = httpx.URL.__new__(httpx.URL)
        ref: Any = url._uri_reference
        fields = list(ref)
        fields[_HOST_AT] = endpoint.address
        fields[_PORT_AT] = endpoint.port
        new._uri_reference = tuple.__new__(type(ref), fields)
        return new
    target = url.copy_with(host=endpoint.address, port=endpoint.port)
    if path is not None:
        target = target.copy_with(raw_path=path.encode("ascii"))
    return target
