"""Inbound request hygiene: what Envoy's HTTP codec refuses, refused here too.

A sidecar's codec rejects a malformed request before any filter sees it; an
in-process server stack (h11, httptools, gunicorn, grpcio) is each lenient in
its own places, and a framework behind it may read the request differently
from the policy (Django upper-cases `delete`, so a DENY on `DELETE` would not
match what its view runs). `request_hygiene` is the one check every stack
runs, through `PolicySet.check`, before normalization and authorization:

- method: one of the methods Envoy's codec knows (GET, DELETE, ...; Istio
  does not set `allow_custom_methods`), written upper-case as they are.
- target: origin-form (`/path?query`), or absolute-form
  (`http://authority/path`), which is reduced to origin-form with its
  authority taking the place of Host (RFC 9112 section 3.2.2, as Envoy does).
  Asterisk-form and authority-form (CONNECT) are refused: nothing here serves
  them. No control byte, space or DEL anywhere in it.
- headers: names are tokens, no NUL/CR/LF in a value; one Host (duplicates
  arrive joined by ","), made of authority characters without userinfo; Host
  and `:authority` agree; HTTP/1.1 has a Host.
- framing: Content-Length is digits (repeats must agree), never beside
  Transfer-Encoding, and Transfer-Encoding is `chunked`.

Pure and cheap: a normal request costs a few set and regex look-ups.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from proxyless_mesh.policy._errors import MalformedRequestError

# The methods of Envoy's (http-parser / Balsa) built-in list, the only ones it
# accepts by default; any other spelling (`delete`) is refused.
_KNOWN = """GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH COPY LOCK MKCOL MOVE PROPFIND
PROPPATCH SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY
SUBSCRIBE UNSUBSCRIBE PURGE MKCALENDAR LINK UNLINK SOURCE QUERY"""
KNOWN_METHODS = frozenset(_KNOWN.split())
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Bytes never allowed in a request target: controls, space, DEL.
_TARGET_BAD = re.compile(rb"[\x00-\x20\x7f]")
# reg-name / IP-literal / port characters (RFC 3986), no userinfo, no ",".
_AUTHORITY = re.compile(r"[A-Za-z0-9\-._~!$&'()*+;=:%\[\]]*")
_ABSOLUTE = re.compile(rb"(?i:https?)://([^/?#]*)(.*)", re.DOTALL)
# Common header names (all tokens): a request carrying only these has its
# names checked with one set operation; any other name is matched as a token.
_COMMON = """host user-agent accept accept-encoding accept-language accept-charset authorization
cookie connection keep-alive content-type content-length content-encoding transfer-encoding
te trailer upgrade cache-control pragma origin referer expect if-match if-none-match
if-modified-since if-unmodified-since if-range range via forwarded x-forwarded-for
x-forwarded-proto x-forwarded-host x-forwarded-port x-real-ip x-request-id x-correlation-id
traceparent tracestate baggage b3 x-b3-traceid x-b3-spanid x-b3-parentspanid x-b3-sampled
x-b3-flags x-envoy-attempt-count x-envoy-expected-rq-timeout-ms x-envoy-original-path
grpc-timeout grpc-encoding grpc-accept-encoding grpc-previous-rpc-attempts
x-forwarded-client-cert sec-fetch-mode sec-fetch-site sec-fetch-dest dnt
x-requested-with"""
_COMMON_NAMES = frozenset(_COMMON.split())


def request_hygiene(
    method: str, target: bytes, headers: Mapping[str, str], http_version: str = "1.1"
) -> tuple[bytes, str | None]:
    """Check one request as received. Returns the origin-form target and,
    when the target was absolute-form, the authority that replaces Host
    (else None). `headers`: lower-case names, repeats joined by ",".
    Raises MalformedRequestError (answer 400) with the reason."""
    if method not in KNOWN_METHODS:
        _check_method(method)
    if _TARGET_BAD.search(target) is not None:
        raise MalformedRequestError("control character or space in the request target")
    authority: str | None = None
    if not target.startswith(b"/"):
        target, authority = _origin_form(target)
    _check_headers(headers, authority, http_version)
    return target, authority


def _check_method(method: str) -> None:
    if method.upper() in KNOWN_METHODS:
        raise MalformedRequestError(f"method {method!r} must be written {method.upper()!r}")
    if _TOKEN.fullmatch(method) is None:
        raise MalformedRequestError(f"method is not an HTTP token: {method[:20]!r}")
    # Envoy's codec (without allow_custom_methods, which Istio does not set),
    # llhttp and so httptools refuse the rest too: every stack answers alike.
    raise MalformedRequestError(f"method {method[:20]!r} is not one Envoy accepts")


def _origin_form(target: bytes) -> tuple[bytes, str]:
    match = _ABSOLUTE.fullmatch(target)
    if match is None:
        raise MalformedRequestError(f"target not origin- or absolute-form: {target[:80]!r}")
    authority = match.group(1).decode("ascii", "replace")
    if not authority or _AUTHORITY.fullmatch(authority) is None:
        raise MalformedRequestError(f"invalid authority in the request target: {authority[:80]!r}")
    rest = match.group(2)
    return (rest if rest.startswith(b"/") else b"/" + rest), authority


def _check_headers(headers: Mapping[str, str], authority: str | None, http_version: str) -> None:
    if not _COMMON_NAMES.issuperset(headers):
        _check_names(headers)
    values = "".join(headers.values())
    if "\x00" in values or "\r" in values or "\n" in values:
        raise MalformedRequestError("NUL, CR or LF in a header value")
    host = headers.get("host")
    pseudo = headers.get(":authority")
    if authority is None:
        if host is None and pseudo is None:
            if http_version == "1.1":
                raise MalformedRequestError("HTTP/1.1 request without Host")
        elif host is not None and pseudo is not None and host != pseudo:
            raise MalformedRequestError("Host and :authority disagree")
        else:
            _check_authority(pseudo if pseudo is not None else host or "")
    if "content-length" in headers or "transfer-encoding" in headers:
        _check_framing(headers)


def _check_names(headers: Mapping[str, str]) -> None:
    for name in headers:
        # (":authority": the one pseudo-header an HTTP/2 server's list may carry.)
        if name not in _COMMON_NAMES and name != ":authority" and not _TOKEN.fullmatch(name):
            raise MalformedRequestError(f"header name is not an HTTP token: {name[:40]!r}")


def _check_authority(value: str) -> None:
    if "," in value:
        raise MalformedRequestError("more than one Host header")
    if _AUTHORITY.fullmatch(value) is None:
        raise MalformedRequestError(f"invalid Host: {value[:80]!r}")


def _check_framing(headers: Mapping[str, str]) -> None:
    length = headers.get("content-length")
    coding = headers.get("transfer-encoding")
    if length is not None and coding is not None:
        raise MalformedRequestError("both Content-Length and Transfer-Encoding")
    if length is not None and not (length.isdigit() and length.isascii()):
        values = {v.strip() for v in length.split(",")}  # repeats must agree
        if len(values) != 1 or not next(iter(values)).isdigit() or not length.isascii():
            raise MalformedRequestError(f"invalid Content-Length: {length[:40]!r}")
    if coding is not None and coding.strip().lower() != "chunked":
        raise MalformedRequestError(f"unsupported Transfer-Encoding: {coding[:40]!r}")
