"""VirtualService http[].corsPolicy and http[].directResponse.

Both are read as Istio's validation reads them and mean what Envoy makes of
Istio's translation: a CORS policy is the route's `envoy.filters.http.cors`
config (lists joined with ",", maxAge in whole seconds); a direct response is
the route's DirectResponseAction (status 200-599, body from `string` or base64
`bytes`) and, like a redirect, forwards nothing.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .model import StringMatch
from .schema import Problems, check_str, get_bool, get_int, get_list, get_object, index, join
from .syntax import parse_duration

CORS_FIELDS = (
    "allowOrigins",
    "allowOrigin",
    "allowMethods",
    "allowHeaders",
    "exposeHeaders",
    "maxAge",
    "allowCredentials",
    "unmatchedPreflights",
)
_PREFLIGHTS = ("UNSPECIFIED", "FORWARD", "IGNORE")
# Fields that forward a request: a rule that answers itself cannot have them.
ANSWER_EXCLUDES = ("route", "rewrite", "mirror", "mirrors", "retries", "timeout")


@dataclass(frozen=True)
class CorsPolicy:
    allow_origins: tuple[StringMatch, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None  # seconds
    allow_credentials: bool | None = None
    forward_unmatched_preflights: bool = True  # unmatchedPreflights FORWARD (the default)


@dataclass(frozen=True)
class DirectResponse:
    status: int
    body: bytes | None = None
    body_is_text: bool = True  # `string` (sent as inline_string) or `bytes`


StringMatchParser = Callable[[Problems, object, str], StringMatch | None]


def parse_cors(
    p: Problems, obj: Mapping[str, Any], where: str, string_match: StringMatchParser
) -> CorsPolicy | None:
    cors = get_object(p, obj, "corsPolicy", where, CORS_FIELDS)
    if cors is None:
        return None
    where = join(where, "corsPolicy")
    origins: list[StringMatch] = []
    for i, raw in enumerate(get_list(p, cors, "allowOrigins", where)):
        match = string_match(p, raw, index(join(where, "allowOrigins"), i))
        if match is not None:
            origins.append(match)
    for i, raw in enumerate(get_list(p, cors, "allowOrigin", where)):  # deprecated: exact
        text = check_str(p, raw, index(join(where, "allowOrigin"), i))
        if text is not None:
            origins.append(StringMatch(kind="exact", value=text))
    max_age = None
    if "maxAge" in cors:
        text = check_str(p, cors["maxAge"], join(where, "maxAge"))
        seconds = parse_duration(text) if text is not None else None
        if text is not None and seconds is None:
            p.add(join(where, "maxAge"), f'invalid duration "{text}" (expected e.g. "24h")')
        max_age = int(seconds) if seconds is not None else None
    preflights = cors.get("unmatchedPreflights", "UNSPECIFIED")
    if preflights not in _PREFLIGHTS:
        p.add(
            join(where, "unmatchedPreflights"), f"must be one of {_PREFLIGHTS}, got {preflights!r}"
        )
    return CorsPolicy(
        allow_origins=tuple(origins),
        allow_methods=_strings(p, cors, "allowMethods", where),
        allow_headers=_strings(p, cors, "allowHeaders", where),
        expose_headers=_strings(p, cors, "exposeHeaders", where),
        max_age=max_age,
        allow_credentials=get_bool(p, cors, "allowCredentials", where),
        forward_unmatched_preflights=preflights != "IGNORE",
    )


def _strings(p: Problems, obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = (
        check_str(p, raw, index(join(where, key), i))
        for i, raw in enumerate(get_list(p, obj, key, where))
    )
    return tuple(v for v in values if v is not None)


def parse_direct_response(p: Problems, obj: Mapping[str, Any], where: str) -> DirectResponse | None:
    direct = get_object(p, obj, "directResponse", where, ("status", "body"))
    if direct is None:
        return None
    where = join(where, "directResponse")
    status = get_int(p, direct, "status", where, required=True, low=200, high=599)
    body = get_object(p, direct, "body", where, ("string", "bytes"))
    text, data = None, None
    if body is not None:
        body_where = join(where, "body")
        if len(body) != 1:
            p.add(body_where, "must set exactly one of string, bytes")
        if "string" in body:
            value = check_str(p, body["string"], join(body_where, "string"))
            text = value.encode() if value is not None else None
        elif "bytes" in body:
            value = check_str(p, body["bytes"], join(body_where, "bytes"))
            try:
                data = base64.b64decode(value or "", validate=True)
            except (binascii.Error, ValueError):
                p.add(join(body_where, "bytes"), "expected base64")
    return DirectResponse(
        status=status or 200,
        body=text if text is not None else data,
        body_is_text=data is None,
    )
