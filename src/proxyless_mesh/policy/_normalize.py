"""Request normalization before policy matching, as Istio's `pathNormalization`.

Istio's modes (MeshConfig.ProxyPathNormalization, "security best practices"):
- NONE: the path is matched as received.
- BASE (default): Envoy's `normalize_path` = RFC 3986 normalization (dot
  segments removed, percent-encoded unreserved characters decoded, escapes
  upper-cased) plus backslash converted to slash. `/a/../b` -> `/b`,
  `\\da` -> `/da`. `%2F` and `%5C` are left escaped (KEEP_UNCHANGED).
- MERGE_SLASHES: BASE, then runs of `/` merged: `/a//b` -> `/a/b`.
- DECODE_AND_MERGE_SLASHES: `%2F`/`%5C` (any case) decoded first (Envoy's
  UNESCAPE_AND_FORWARD), then MERGE_SLASHES: `/a%2fb` -> `/a/b`.

In-process there is one deviation, on purpose: ASGI's `scope["path"]` and
WSGI's `PATH_INFO` are percent-DECODED, so a `%2F` that the policy saw as one
path segment reaches the app as a separator. That is exactly the
authorize-one-thing-serve-another bypass, so in every mode but
DECODE_AND_MERGE_SLASHES a path still holding `%2F`/`%5C` is rejected (Envoy's
REJECT_REQUEST) instead of kept. `%00`, invalid escapes and control
characters are rejected in every mode. The fragment is stripped and the
query is excluded from the path (it is kept, unchanged, for the app).
"""

from __future__ import annotations

import enum
from urllib.parse import unquote_to_bytes

from proxyless_mesh.policy._errors import MalformedRequestError


class PathNormalization(enum.Enum):
    NONE = "NONE"
    BASE = "BASE"
    MERGE_SLASHES = "MERGE_SLASHES"
    DECODE_AND_MERGE_SLASHES = "DECODE_AND_MERGE_SLASHES"


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# pchar minus pct-encoded, plus "/": kept literally; anything else is escaped.
_LITERAL = _UNRESERVED | frozenset(b"!$&'()*+,;=:@/")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Split a request target into (path, query), dropping any fragment."""
    target = target.split(b"#", 1)[0]
    path, _, query = target.partition(b"?")
    return path, query


def normalize_path(raw_path: bytes, mode: PathNormalization = PathNormalization.BASE) -> str:
    """Normalize a raw path (no query, no fragment) per `mode`; return the
    percent-encoded ASCII form the policy matches. Raises MalformedRequestError."""
    if not raw_path:
        return "/"
    if mode is PathNormalization.DECODE_AND_MERGE_SLASHES:
        raw_path = _unescape_slashes(raw_path)
    canonical = _canonical_escapes(raw_path, backslash_to_slash=mode is not PathNormalization.NONE)
    if mode is not PathNormalization.NONE:
        if not canonical.startswith("/"):
            raise MalformedRequestError(f"request path must start with '/': {canonical[:80]!r}")
        canonical = remove_dot_segments(canonical)
    if mode in (PathNormalization.MERGE_SLASHES, PathNormalization.DECODE_AND_MERGE_SLASHES):
        canonical = _merge_slashes(canonical)
    upper = canonical.upper()
    if "%2F" in upper or "%5C" in upper:
        raise MalformedRequestError(
            "escaped slash (%2F or %5C) in the path: the app would see a different path than"
            " the policy; use pathNormalization DECODE_AND_MERGE_SLASHES to accept such paths"
        )
    return canonical


def app_path(normalized: str) -> bytes:
    """The decoded bytes an ASGI/WSGI app sees for a normalized path."""
    return unquote_to_bytes(normalized)


def normalize_host(authority: str) -> str:
    """Host for matching: lower-case, without port, without a trailing dot."""
    host = authority.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            return host[: end + 1]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 on an absolute path. Segments are compared after
    unreserved escapes were decoded, so `%2e%2e` counts as `..`."""
    segments = path.split("/")
    out: list[str] = []
    for seg in segments[1:]:
        if seg == ".":
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    if segments[-1] in (".", ".."):
        out.append("")  # "/a/." and "/a/.." keep the trailing slash
    return "/" + "/".join(out)


def _merge_slashes(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


def _unescape_slashes(raw: bytes) -> bytes:
    for esc, char in ((b"%2F", b"/"), (b"%2f", b"/"), (b"%5C", b"\\"), (b"%5c", b"\\")):
        raw = raw.replace(esc, char)
    return raw


def _canonical_escapes(raw: bytes, *, backslash_to_slash: bool) -> str:
    """Validate escapes, decode unreserved ones, upper-case the rest, escape
    bytes that are not allowed literally; reject NUL and control bytes."""
    out: list[str] = []
    i = 0
    n = len(raw)
    while i < n:
        b = raw[i]
        if b == 0x25:  # '%'
            hi, lo = raw[i + 1 : i + 2], raw[i + 2 : i + 3]
            if not hi or not lo or hi[0] not in _HEX or lo[0] not in _HEX:
                raise MalformedRequestError("invalid percent escape in the path")
            value = int(raw[i + 1 : i + 3], 16)
            if value == 0:
                raise MalformedRequestError("%00 in the path")
            out.append(chr(value) if value in _UNRESERVED else "%" + f"{value:02X}")
            i += 3
            continue
        if b < 0x20 or b == 0x7F:
            raise MalformedRequestError("control character in the path")
        if b == 0x5C:
            out.append("/" if backslash_to_slash else "\\")
        elif b in _LITERAL:
            out.append(chr(b))
        else:
            out.append(f"%{b:02X}")
        i += 1
    return "".join(out)
