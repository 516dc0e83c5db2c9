"""Small typed readers for YAML trees, reporting problems with field paths.

Validation is written as plain code over these readers rather than a schema
language: each reader checks one value's type and reports a `ConfigProblem`
naming its exact path (``spec.http[0].route``), then returns a harmless
fallback so validation can go on and find every other problem in the same run.
A resource whose checks recorded any problem is discarded by the caller
(the shared sink grew), so the fallbacks never reach a `MeshConfig`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from .errors import ConfigProblem

NOT_SUPPORTED = "not supported yet"
MISSING = "missing required field"
UNKNOWN_FIELD = "unknown field"
SCHEMA_ERROR = "IST0106"

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_HOST_CHARS = re.compile(r"[A-Za-z0-9.\-*]+")


class Problems:
    """Where the problems of one resource are written.

    Before a resource's kind and name are known, problems are located by the
    line its document starts on instead (`line`, ignored once `resource` is set).
    """

    def __init__(
        self, sink: list[ConfigProblem], file: str, resource: str = "", line: int | None = None
    ) -> None:
        self.sink = sink
        self.file = file
        self.resource = resource
        self.line = None if resource else line

    def add(self, field: str, message: str, code: str = "") -> None:
        self.sink.append(ConfigProblem(self.file, self.resource, field, message, self.line, code))

    def schema(self, field: str, message: str) -> None:
        """A value Istio's own schema refuses (wrong type, missing, unknown,
        out of range): Istio's analyzer code IST0106 SchemaValidationError."""
        self.add(field, message, SCHEMA_ERROR)


def join(path: str, key: object) -> str:
    """`spec` + `hosts` -> `spec.hosts`; the top level has no prefix."""
    return f"{path}.{key}" if path else str(key)


def index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def type_name(value: object) -> str:
    """The YAML-ish name of a Python value's type, for "expected X, got Y"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def read_object(
    p: Problems,
    value: object,
    path: str,
    known: Collection[str],
    unsupported: Collection[str] = (),
) -> dict[str, Any]:
    """Check that `value` is a mapping whose keys are all known.

    Keys in `unsupported` are valid Istio fields this mesh does not implement
    yet; they are reported as such rather than as unknown, so the operator can
    tell a typo from a missing feature. Returns {} when `value` is not a mapping.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        p.schema(path, f"expected a mapping, got {type_name(value)}")
        return {}
    for key in value:
        if key in known:
            continue
        if key in unsupported:
            p.add(join(path, key), NOT_SUPPORTED)  # a valid Istio field
        else:
            p.schema(join(path, key), UNKNOWN_FIELD)
    return {k: v for k, v in value.items() if k in known and v is not None}


def get_object(
    p: Problems,
    obj: Mapping[str, Any],
    key: str,
    path: str,
    known: Collection[str],
    unsupported: Collection[str] = (),
    *,
    required: bool = False,
) -> dict[str, Any] | None:
    """The mapping at `obj[key]`, checked as by `read_object`; None when absent."""
    where = join(path, key)
    if key not in obj:
        if required:
            p.schema(where, MISSING)
        return None
    return read_object(p, obj[key], where, known, unsupported)


def get_str(
    p: Problems, obj: Mapping[str, Any], key: str, path: str, *, required: bool = False
) -> str | None:
    """The string at `obj[key]`, or None when absent or not a string."""
    where = join(path, key)
    if key not in obj:
        if required:
            p.schema(where, MISSING)
        return None
    return check_str(p, obj[key], where)


def check_str(p: Problems, value: object, where: str) -> str | None:
    if isinstance(value, str):
        return value
    hint = " (quote the value)" if isinstance(value, int | float | bool) else ""
    p.schema(where, f"expected a string, got {type_name(value)}{hint}")
    return None


def get_int(
    p: Problems,
    obj: Mapping[str, Any],
    key: str,
    path: str,
    *,
    required: bool = False,
    low: int | None = None,
    high: int | None = None,
) -> int | None:
    """The integer at `obj[key]` within [low, high], or None when absent or invalid."""
    where = join(path, key)
    if key not in obj:
        if required:
            p.schema(where, MISSING)
        return None
    return check_int(p, obj[key], where, low=low, high=high)


def check_int(
    p: Problems, value: object, where: str, *, low: int | None = None, high: int | None = None
) -> int | None:
    # bool is an int subclass in Python; `true` is never a number in Istio's API.
    if not isinstance(value, int) or isinstance(value, bool):
        p.schema(where, f"expected an integer, got {type_name(value)}")
        return None
    if low is not None and high is not None and not low <= value <= high:
        p.schema(where, f"must be between {low} and {high}, got {value}")
        return None
    if low is not None and value < low:
        p.schema(where, f"must be >= {low}, got {value}")
        return None
    return value


def get_bool(p: Problems, obj: Mapping[str, Any], key: str, path: str) -> bool | None:
    where = join(path, key)
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, bool):
        p.schema(where, f"expected a boolean, got {type_name(value)}")
        return None
    return value


def get_list(
    p: Problems,
    obj: Mapping[str, Any],
    key: str,
    path: str,
    *,
    required: bool = False,
    non_empty: bool = False,
) -> list[Any]:
    """The list at `obj[key]`; [] when absent or not a list."""
    where = join(path, key)
    if key not in obj:
        if required:
            p.schema(where, MISSING)
        return []
    value = obj[key]
    if not isinstance(value, list):
        p.schema(where, f"expected a list, got {type_name(value)}")
        return []
    if non_empty and not value:
        p.schema(where, "must not be empty")
    return value


def get_str_map(p: Problems, obj: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
    """A string -> string mapping such as labels; {} when absent or invalid."""
    where = join(path, key)
    if key not in obj:
        return {}
    return check_str_map(p, obj[key], where)


def check_str_map(p: Problems, value: object, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        p.schema(where, f"expected a mapping, got {type_name(value)}")
        return {}
    result: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str):
            p.schema(where, f"keys must be strings, got {type_name(k)} {k!r}")
            continue
        text = check_str(p, v, join(where, k))
        if text is not None:
            result[k] = text
    return result


def check_host(p: Problems, value: object, where: str) -> str:
    """A service host name: a lower-cased DNS name without wildcards.

    Istio also accepts wildcard hosts ("*.example.com"); routing them needs
    suffix matching this mesh does not do yet, so they are refused clearly.
    """
    text = check_str(p, value, where)
    if text is None:
        return ""
    host = text.lower()
    if "*" in host:
        p.add(where, f'wildcard hosts are not supported yet: "{text}"')
        return host
    labels = host.split(".")
    if (
        not _HOST_CHARS.fullmatch(host)
        or len(host) > 253
        or not all(_DNS_LABEL.fullmatch(label) and len(label) <= 63 for label in labels)
    ):
        p.schema(
            where, f'invalid host name "{text}" (expected a DNS name like "reviews.shop.mesh")'
        )
    return host


def check_host_pattern(p: Problems, value: object, where: str) -> str:
    """A host that may be a wildcard: "*", "*.suffix" (Istio's gateway and
    gateway-bound VirtualService hosts) or a DNS name as `check_host` reads it."""
    text = check_str(p, value, where)
    if text is None:
        return ""
    host = text.lower()
    if host == "*":
        return host
    if host.startswith("*.") and "*" not in host[2:]:
        check_host(p, host[2:], where)
        return host
    return check_host(p, text, where)


def is_dns_label(text: str) -> bool:
    return len(text) <= 63 and _DNS_LABEL.fullmatch(text) is not None


def is_dns_subdomain(text: str) -> bool:
    """Kubernetes' DNS-1123 subdomain (most object names): up to 253 characters,
    dot-separated parts of letters, digits and "-"; unlike a DNS label, a part
    may be longer than 63."""
    return len(text) <= 253 and all(_DNS_LABEL.fullmatch(part) for part in text.split("."))


def check_enum(
    p: Problems,
    value: str,
    where: str,
    supported: Collection[str],
    unsupported: Collection[str] = (),
) -> str | None:
    """`value` if in `supported`; a clear problem for known-but-unsupported and unknown ones."""
    if value in supported:
        return value
    expected = ", ".join(supported)
    if value in unsupported:
        p.add(where, f"{value} is {NOT_SUPPORTED} (supported: {expected})")
    else:
        p.schema(where, f'unknown value "{value}" (expected one of {expected})')
    return None
