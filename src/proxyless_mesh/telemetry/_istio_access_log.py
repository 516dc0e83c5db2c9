"""Access lines as Istio's proxies write them: Envoy's default text format
(the one Istio's `accessLogFile` uses with `accessLogEncoding: TEXT`) or
Istio's JSON keys (`accessLogEncoding: JSON`), so log pipelines built for
Istio parse them unchanged.

A Call is turned into Envoy command-operator values (`operators`), and the
chosen format renders them. An unset value is `-` in text and null in JSON,
as Envoy writes them; numbers stay numbers in JSON.

What a library in the caller's or server's process cannot know is unset:
`%UPSTREAM_LOCAL_ADDRESS%` and `%UPSTREAM_TRANSPORT_FAILURE_REASON%` (the
connection pool's sockets are httpx's), `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`
and `%CONNECTION_TERMINATION_DETAILS%`; `%DOWNSTREAM_*%` are the server
side's client and local socket addresses (unset on the source side, where
the "downstream" is the application itself).
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxyless_mesh.telemetry._call import Call

#: Envoy's default access log format, as Istio configures it.
TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
    '%CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" '
    "%BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" '
    '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% '
    "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% "
    "%ROUTE_NAME%"
)
#: Istio's JSON access log keys and the operator each one carries.
JSON_FORMAT = (
    ("start_time", "START_TIME"),
    ("route_name", "ROUTE_NAME"),
    ("method", "REQ(:METHOD)"),
    ("path", "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)"),
    ("protocol", "PROTOCOL"),
    ("response_code", "RESPONSE_CODE"),
    ("response_flags", "RESPONSE_FLAGS"),
    ("response_code_details", "RESPONSE_CODE_DETAILS"),
    ("connection_termination_details", "CONNECTION_TERMINATION_DETAILS"),
    ("bytes_received", "BYTES_RECEIVED"),
    ("bytes_sent", "BYTES_SENT"),
    ("duration", "DURATION"),
    ("upstream_service_time", "RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)"),
    ("x_forwarded_for", "REQ(X-FORWARDED-FOR)"),
    ("user_agent", "REQ(USER-AGENT)"),
    ("request_id", "REQ(X-REQUEST-ID)"),
    ("authority", "REQ(:AUTHORITY)"),
    ("upstream_host", "UPSTREAM_HOST"),
    ("upstream_cluster", "UPSTREAM_CLUSTER"),
    ("upstream_local_address", "UPSTREAM_LOCAL_ADDRESS"),
    ("downstream_local_address", "DOWNSTREAM_LOCAL_ADDRESS"),
    ("downstream_remote_address", "DOWNSTREAM_REMOTE_ADDRESS"),
    ("requested_server_name", "REQUESTED_SERVER_NAME"),
    ("upstream_transport_failure_reason", "UPSTREAM_TRANSPORT_FAILURE_REASON"),
)
FORMATS = ("text", "json")
#: %RESPONSE_CODE_DETAILS% of the local replies a flag stands for.
_DETAILS = {
    "NR": "route_not_found",
    "NC": "cluster_not_found",
    "UH": "no_healthy_upstream",
    "UT": "upstream_response_timeout",
    "UO": "upstream_reset_before_response_started{overflow}",
    "UF": "upstream_reset_before_response_started{connection_failure}",
    "URX": "via_upstream",
}
# The text format, split once into literal text and operator names.
_PARTS = re.split(r"%([A-Z_]+(?:\([^)]*\))?)%", TEXT_FORMAT)

Value = str | int | None


def operators(call: Call, flag_text: str, duration_ms: float) -> dict[str, Value]:
    """The operator values one finished call gives."""
    first_flag = flag_text.split(",", 1)[0]
    details = _DETAILS.get(first_flag, "via_upstream") if call.status else None
    values: dict[str, Value] = {
        "START_TIME": iso_time(call.start_ns),
        "REQ(:METHOD)": call.method,
        "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)": call.path,
        "PROTOCOL": call.http_version or ("HTTP/2" if call.protocol == "grpc" else "HTTP/1.1"),
        "RESPONSE_CODE": call.status,
        "RESPONSE_FLAGS": flag_text,
        "RESPONSE_CODE_DETAILS": details,
        "BYTES_RECEIVED": call.request_bytes,
        "BYTES_SENT": call.response_bytes,
        "DURATION": int(duration_ms),
        "REQ(X-REQUEST-ID)": call.request_id or None,
        "REQ(:AUTHORITY)": call.authority or None,
        "UPSTREAM_HOST": call.upstream_host or None,
        "UPSTREAM_CLUSTER": call.cluster or None,
        "ROUTE_NAME": call.route_name or None,
    }
    if call.log_extra:
        values.update(call.log_extra)
    return values


# Dry-run AuthorizationPolicy results (Envoy's RBAC dynamic metadata, Istio's
# prefixes): written only on the lines of requests a dry-run policy saw, after
# Istio's fields (text: ` key=value`; JSON: their own keys).
DRY_RUN_KEYS = tuple(
    f"istio_dry_run_{action}_shadow_{what}"
    for action in ("allow", "deny")
    for what in ("engine_result", "effective_policy_id")
)
_DRY_RUN = tuple((key, f"DYNAMIC_METADATA(envoy.filters.http.rbac:{key})") for key in DRY_RUN_KEYS)


def render_text(values: dict[str, Value]) -> str:
    out = []
    for i, part in enumerate(_PARTS):
        if i % 2 == 0:
            out.append(part)
        else:
            value = values.get(part)
            out.append("-" if value is None or value == "" else str(value))
    for key, operator in _DRY_RUN:
        if (value := values.get(operator)) is not None:
            out.append(f" {key}={value}")
    return "".join(out)


def render_json(values: dict[str, Value]) -> str:
    record = {key: values.get(operator) for key, operator in JSON_FORMAT}
    for key, operator in _DRY_RUN:
        if (value := values.get(operator)) is not None:
            record[key] = value
    return json.dumps(record, separators=(",", ":"))


def iso_time(epoch_ns: int) -> str:
    """Envoy's %START_TIME% default shape: UTC, milliseconds, `Z`."""
    seconds, ns = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1_000_000:03d}Z"
