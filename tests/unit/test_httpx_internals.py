"""The httpx/httpcore internals the transports rely on (listed in the README)
were checked against these versions; another version must be checked again
before this list changes. The guards that fall back to public API are tested
here too, so a check that passes says the fast paths are really taken."""

from __future__ import annotations

import httpcore
import httpx

from proxyless_mesh.integrations import _httpx_exchange, _pool, _tls_transport
from proxyless_mesh.model import Endpoint

CHECKED = {("0.29.0", "1.0.9")}


def test_versions_are_the_checked_ones() -> None:
    versions = (httpx.__version__, httpcore.__version__)
    assert versions in CHECKED, (
        f"httpx/httpcore {versions} were not checked: re-read the README's list of "
        "internals (pool planning, HTTPTransport._pool, URL._uri_reference) against "
        "them, then add them to CHECKED"
    )


def test_the_fast_paths_are_taken_on_these_versions() -> None:
    assert _pool.supported()
    assert _httpx_exchange._FAST_URL and _tls_transport._FAST_URL
    plain = _pool.linear(httpx.HTTPTransport())
    assert type(plain._pool) is _pool.LinearConnectionPool
    pool = plain._pool
    for name in ("_connections", "_requests", "_max_connections", "_max_keepalive_connections"):
        assert hasattr(pool, name), name


def test_the_fast_url_equals_the_public_one() -> None:
    url = httpx.URL("http://reviews.default.mesh:9080/a/b?x=1&y=%20")
    endpoint = Endpoint("10.0.0.7", 8080)
    fast = _httpx_exchange.endpoint_url(url, endpoint)
    assert fast == url.copy_with(host="10.0.0.7", port=8080)
    assert str(fast) == "http://10.0.0.7:8080/a/b?x=1&y=%20"
    assert _httpx_exchange.url_parts(url) == ("reviews.default.mesh:9080", "/a/b")
