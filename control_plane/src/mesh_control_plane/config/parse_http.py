"""VirtualService http[] resilience and rewriting fields -> model objects:
retries, fault, mirror(s), rewrite, redirect, headers.

Values are checked against what Envoy and gRPC accept (retry condition names,
HTTP/gRPC status codes, redirect codes, RE2 regexes), so a typo is reported
with its file and field instead of as a NACK from every client.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from proxyless_mesh.grpc_wire import CODE_NAMES

from .model import (
    Destination,
    FaultAbort,
    FaultDelay,
    HeaderOperations,
    Headers,
    HTTPFaultInjection,
    HTTPRedirect,
    HTTPRetry,
    HTTPRewrite,
    Mirror,
)
from .schema import (
    MISSING,
    Problems,
    check_str,
    check_str_map,
    get_bool,
    get_int,
    get_list,
    get_object,
    get_str,
    index,
    join,
    read_object,
)
from .syntax import not_in_re2, parse_duration

# Envoy's router conditions (x-envoy-retry-on) and gRPC's (x-envoy-retry-grpc-on).
HTTP_RETRY_ON = (
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
)
GRPC_RETRY_ON = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
GRPC_STATUS_CODES = {name: code for code, name in enumerate(CODE_NAMES)}
REDIRECT_CODES = (301, 302, 303, 307, 308)  # what Envoy's RedirectAction can send

_RETRY_FIELDS = ("attempts", "perTryTimeout", "retryOn", "retryRemoteLocalities")
_RETRY_UNSUPPORTED = ("retryIgnorePreviousHosts", "backoff")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_SCHEMES = ("http", "https")


def parse_retries(p: Problems, obj: Mapping[str, Any], where: str) -> HTTPRetry | None:
    retry = get_object(p, obj, "retries", where, _RETRY_FIELDS, _RETRY_UNSUPPORTED)
    if retry is None:
        return None
    where = join(where, "retries")
    attempts = get_int(p, retry, "attempts", where, low=0, high=2**31 - 1) or 0
    per_try = _duration(p, retry, "perTryTimeout", where)
    if per_try is not None and per_try < 0.001:
        p.add(join(where, "perTryTimeout"), "must be at least 1ms")
    conditions: list[str] = []
    codes: list[int] = []
    text = get_str(p, retry, "retryOn", where)
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        if item.isdigit():
            code = int(item)
            if not 100 <= code <= 599:
                p.add(join(where, "retryOn"), f"status code {code} is not between 100 and 599")
            elif code not in codes:
                codes.append(code)
        elif item in HTTP_RETRY_ON or item in GRPC_RETRY_ON:
            if item not in conditions:
                conditions.append(item)
        else:
            p.add(
                join(where, "retryOn"),
                f'unknown retry condition "{item}" (Envoy: {", ".join(HTTP_RETRY_ON)}; '
                f"gRPC: {', '.join(GRPC_RETRY_ON)}; or an HTTP status code)",
            )
    if codes and "retriable-status-codes" not in conditions:
        conditions.append("retriable-status-codes")  # Istio adds it for bare codes
    return HTTPRetry(
        attempts=attempts,
        per_try_timeout=per_try,
        retry_on=tuple(conditions),
        retriable_status_codes=tuple(codes),
        retry_remote_localities=bool(get_bool(p, retry, "retryRemoteLocalities", where)),
    )


def parse_fault(p: Problems, obj: Mapping[str, Any], where: str) -> HTTPFaultInjection | None:
    fault = get_object(p, obj, "fault", where, ("delay", "abort"))
    if fault is None:
        return None
    where = join(where, "fault")
    delay = None
    raw_delay = get_object(
        p, fault, "delay", where, ("fixedDelay", "percentage"), ("exponentialDelay", "percent")
    )
    if raw_delay is not None:
        delay_where = join(where, "delay")
        fixed = _duration(p, raw_delay, "fixedDelay", delay_where)
        if "fixedDelay" not in raw_delay:
            p.schema(join(delay_where, "fixedDelay"), MISSING)
        elif fixed is not None and fixed < 0.001:
            p.add(join(delay_where, "fixedDelay"), "must be at least 1ms")
        delay = FaultDelay(fixed or 0.0, _percentage(p, raw_delay, "percentage", delay_where, 0.0))
    abort = None
    raw_abort = get_object(
        p, fault, "abort", where, ("httpStatus", "grpcStatus", "percentage"), ("http2Error",)
    )
    if raw_abort is not None:
        abort_where = join(where, "abort")
        abort = _abort(p, raw_abort, abort_where)
    if not fault:
        p.add(where, "must set delay or abort")
    return HTTPFaultInjection(delay=delay, abort=abort)


def _abort(p: Problems, raw: Mapping[str, Any], where: str) -> FaultAbort:
    percentage = _percentage(p, raw, "percentage", where, 0.0)
    kinds = [k for k in ("httpStatus", "grpcStatus") if k in raw]
    if len(kinds) != 1:
        p.add(where, "must set exactly one of httpStatus, grpcStatus")
        return FaultAbort(percentage)
    if kinds[0] == "httpStatus":
        return FaultAbort(
            percentage, http_status=get_int(p, raw, "httpStatus", where, low=200, high=599)
        )
    name = get_str(p, raw, "grpcStatus", where) or ""
    code = GRPC_STATUS_CODES.get(name.upper())
    if code is None or code == 0:
        p.add(
            join(where, "grpcStatus"),
            f'unknown gRPC status "{name}" (expected a name such as UNAVAILABLE, not OK)',
        )
    return FaultAbort(percentage, grpc_status=code)


def parse_mirrors(
    p: Problems,
    obj: Mapping[str, Any],
    where: str,
    parse_destination: Callable[[Problems, Mapping[str, Any], str], Destination],
) -> tuple[Mirror, ...]:
    """`mirror` + `mirrorPercentage`, or the newer `mirrors[]` list (not both)."""
    if "mirror" in obj and "mirrors" in obj:
        p.add(join(where, "mirrors"), "cannot be used together with mirror")
        return ()
    if "mirror" in obj:
        # parse_destination reads item["destination"]; `mirror` is that destination.
        dest = parse_destination(p, {"destination": obj["mirror"]}, where)
        return (Mirror(dest, _percentage(p, obj, "mirrorPercentage", where, 100.0)),)
    if "mirrorPercentage" in obj:
        p.add(join(where, "mirrorPercentage"), "needs mirror")
    mirrors: list[Mirror] = []
    for i, raw in enumerate(get_list(p, obj, "mirrors", where)):
        item_where = index(join(where, "mirrors"), i)
        item = read_object(p, raw, item_where, ("destination", "percentage"))
        dest = parse_destination(p, item, item_where)
        percentage = _percentage(p, item, "percentage", item_where, 100.0)
        mirrors.append(Mirror(dest, percentage, in_list=True))
    return tuple(mirrors)


def parse_rewrite(p: Problems, obj: Mapping[str, Any], where: str) -> HTTPRewrite | None:
    rewrite = get_object(p, obj, "rewrite", where, ("uri", "authority", "uriRegexRewrite"))
    if rewrite is None:
        return None
    where = join(where, "rewrite")
    uri = get_str(p, rewrite, "uri", where)
    if uri == "":
        p.add(join(where, "uri"), "must not be empty")
    regex = None
    raw = get_object(p, rewrite, "uriRegexRewrite", where, ("match", "rewrite"))
    if raw is not None:
        regex_where = join(where, "uriRegexRewrite")
        pattern = get_str(p, raw, "match", regex_where, required=True)
        substitution = get_str(p, raw, "rewrite", regex_where, required=True)
        if pattern is not None and _check_regex(p, pattern, join(regex_where, "match")):
            regex = (pattern, substitution or "")
        if uri is not None:
            p.add(regex_where, "cannot be used together with uri")
    authority = get_str(p, rewrite, "authority", where)
    if not rewrite:
        p.add(where, "must set uri, uriRegexRewrite or authority")
    return HTTPRewrite(uri=uri or None, authority=authority or None, uri_regex=regex)


def parse_redirect(p: Problems, obj: Mapping[str, Any], where: str) -> HTTPRedirect | None:
    fields = ("uri", "authority", "port", "scheme", "redirectCode")
    redirect = get_object(p, obj, "redirect", where, fields, ("derivePort",))
    if redirect is None:
        return None
    where = join(where, "redirect")
    scheme = get_str(p, redirect, "scheme", where)
    if scheme is not None and scheme not in _SCHEMES:
        p.add(join(where, "scheme"), f'expected "http" or "https", got "{scheme}"')
    code = get_int(p, redirect, "redirectCode", where)
    if code is not None and code not in REDIRECT_CODES:
        p.add(join(where, "redirectCode"), f"must be one of {REDIRECT_CODES}, got {code}")
    if not redirect:
        p.add(where, "must set at least one of uri, authority, port, scheme")
    return HTTPRedirect(
        uri=get_str(p, redirect, "uri", where) or None,
        authority=get_str(p, redirect, "authority", where) or None,
        port=get_int(p, redirect, "port", where, low=1, high=65535),
        scheme=scheme,
        redirect_code=code or 301,
    )


def parse_headers(p: Problems, obj: Mapping[str, Any], where: str) -> Headers:
    headers = get_object(p, obj, "headers", where, ("request", "response"))
    if headers is None:
        return Headers()
    where = join(where, "headers")
    return Headers(
        request=_operations(p, headers, "request", where),
        response=_operations(p, headers, "response", where),
    )


def _operations(p: Problems, obj: Mapping[str, Any], key: str, path: str) -> HeaderOperations:
    ops = get_object(p, obj, key, path, ("set", "add", "remove"))
    if ops is None:
        return HeaderOperations()
    where = join(path, key)
    pairs: dict[str, tuple[tuple[str, str], ...]] = {}
    for op in ("set", "add"):
        values = check_str_map(p, ops[op], join(where, op)) if op in ops else {}
        checked = [
            (name.lower(), value)
            for name, value in values.items()
            if _check_header_name(p, name, join(join(where, op), name))
        ]
        pairs[op] = tuple(sorted(checked))
    remove: list[str] = []
    for i, raw in enumerate(get_list(p, ops, "remove", where)):
        name = check_str(p, raw, index(join(where, "remove"), i))
        if name is not None and _check_header_name(p, name, index(join(where, "remove"), i)):
            remove.append(name.lower())
    return HeaderOperations(set=pairs["set"], add=pairs["add"], remove=tuple(remove))


def _check_header_name(p: Problems, name: str, where: str) -> bool:
    """Envoy refuses to add or remove pseudo-headers and `host` (use rewrite.authority)."""
    lowered = name.lower()
    if lowered == "host" or lowered.startswith(":"):
        p.add(where, f'header "{name}" cannot be changed here (use rewrite.authority for the host)')
        return False
    if not _HEADER_NAME.fullmatch(lowered):
        p.add(where, f"invalid header name {name!r}")
        return False
    return True


def _check_regex(p: Problems, pattern: str, where: str) -> bool:
    try:
        re.compile(pattern)
    except re.error as err:
        p.add(where, f"invalid regex {pattern!r}: {err}")
        return False
    missing = not_in_re2(pattern)
    if missing:
        p.add(where, f"invalid regex {pattern!r}: RE2 (Envoy, gRPC) has no {missing}")
        return False
    return True


def _percentage(p: Problems, obj: Mapping[str, Any], key: str, where: str, default: float) -> float:
    """Istio's Percent `{value: 0..100}` (a double), or `default` when absent."""
    raw = get_object(p, obj, key, where, ("value",))
    if raw is None:
        return default
    field = join(join(where, key), "value")
    value = raw.get("value", 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        p.add(field, "expected a number")
        return default
    if not 0 <= value <= 100:
        p.add(field, f"must be between 0 and 100, got {value}")
        return default
    return float(value)


def _duration(p: Problems, obj: Mapping[str, Any], key: str, where: str) -> float | None:
    if key not in obj:
        return None
    field = join(where, key)
    text = check_str(p, obj[key], field)
    if text is None:
        return None
    seconds = parse_duration(text)
    if seconds is None:
        p.add(field, f'invalid duration "{text}" (expected e.g. "1.5s", "300ms", "2m")')
    return seconds
