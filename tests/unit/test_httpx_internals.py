"""The httpx/httpcore internals the transports rely on (listed in the README)
were checked against these versions; another version must be checked again
before this list changes. The guards that fall back to public API are tested
here too, so a check that passes says the fast paths are really taken."""

from __future__ import annotations

import httpcore
import httpx

from proxyless_mesh.integrations import _httpx_telemetry, _httpx_urls, _pool, _tls_transport
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
    assert _httpx_urls._FAST_URL and _tls_transport._FAST_URL
    plain = _pool.linear(httpx.HTTPTransport())
    assert type(plain._pool) is _pool.LinearConnectionPool
    pool = plain._pool
    for name in ("_connections", "_requests", "_max_connections", "_max_keepalive_connections"):
        assert hasattr(pool, name), name


def test_the_fast_url_equals_the_public_one() -> None:
    url = httpx.URL("http://reviews.default.mesh:9080/a/b?x=1&y=%20")
    endpoint = Endpoint("10.0.0.7", 8080)
    fast = _httpx_urls.endpoint_url(url, endpoint)
    assert fast == url.copy_with(host="10.0.0.7", port=8080)
    assert str(fast) == "http://10.0.0.7:8080/a/b?x=1&y=%20"
    assert _httpx_urls.url_parts(url) == ("reviews.default.mesh:9080", "/a/b")


PEERS = (
    ("X-Envoy-Peer-Metadata-Id", "sidecar~10.0.0.1~a.default~default.svc"),
    ("x-envoy-peer-metadata", "Q2c9PQ=="),
)


def _set_one_by_one(headers: httpx.Headers, pairs: tuple[tuple[str, str], ...]) -> None:
    for name, value in pairs:
        headers[name] = value


def test_prepared_headers_equal_setting_them_one_by_one() -> None:
    # The first try (none present), a retry (all present) and an application
    # that set one itself (replaced, as __setitem__ replaces it).
    for before in (
        [("accept", "*/*")],
        [("accept", "*/*"), *PEERS],
        [("X-ENVOY-PEER-METADATA", "old")],
    ):
        fast, public = httpx.Headers(before), httpx.Headers(before)
        _httpx_telemetry.add_headers(fast, PEERS)
        _set_one_by_one(public, PEERS)
        assert fast.raw == public.raw
        assert fast.multi_items() == public.multi_items()


def test_prepared_headers_take_the_fast_path_here_and_fall_back_when_not_ascii() -> None:
    headers = httpx.Headers({"accept": "*/*"})
    _httpx_telemetry.add_headers(headers, PEERS)
    assert headers.raw[1:] == [(name.encode(), value.encode()) for name, value in PEERS]
    assert _httpx_telemetry._prepared(PEERS) is not None  # prepared once, kept
    wide = (("x-envoy-peer-metadata-id", "nœud"),)
    fast, public = httpx.Headers(encoding="utf-8"), httpx.Headers(encoding="utf-8")
    _httpx_telemetry.add_headers(fast, wide)
    _set_one_by_one(public, wide)
    assert _httpx_telemetry._prepared(wide) is None
    assert fast.raw == public.raw == [(b"x-envoy-peer-metadata-id", "nœud".encode())]


def test_prepared_headers_are_taken_back_only_while_still_last() -> None:
    headers = httpx.Headers({"accept": "*/*"})
    added = _httpx_telemetry.add_headers(headers, PEERS)
    assert added is not None
    _httpx_telemetry.take_back(headers, added)
    assert headers.raw == [(b"accept", b"*/*")]
    added = _httpx_telemetry.add_headers(headers, PEERS)
    assert added is not None
    headers["x-request-id"] = "r1"  # set after them: they are left where they are
    _httpx_telemetry.take_back(headers, added)
    assert [name for name, _ in headers.raw][1:] == [name.encode() for name, _ in PEERS] + [
        b"x-request-id"
    ]
    assert _httpx_telemetry.add_headers(headers, PEERS) is None  # present: the public API


def test_a_raw_header_reads_as_headers_get() -> None:
    for raw in (
        [(b"content-type", b"application/grpc")],
        [(b"Grpc-Status", b"14")],
        [(b"grpc-status", b"0"), (b"x", b"\xe9"), (b"GRPC-STATUS", b"2")],
    ):
        headers = httpx.Headers(raw)
        assert _httpx_telemetry.raw_header(headers, b"grpc-status") == headers.get("grpc-status")
