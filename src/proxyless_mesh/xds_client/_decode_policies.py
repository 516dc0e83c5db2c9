"""The load-balancing and resilience parts of CDS and RDS resources -> model.

Cluster: ring hash / maglev tables, slow start, outlier detection, circuit
breakers (with the retry budget), panic threshold, connect and idle timeouts.
Route: fault injection (HTTPFault in ``typed_per_filter_config``), redirects
and header mutations. Absent fields take Envoy's defaults; values gRPC or Envoy
would refuse raise `XdsResourceError` with the reason, so the resource is NACKed.
FractionalPercents become 0..100 floats.
"""

from __future__ import annotations

from typing import Any

from proxyless_mesh.errors import XdsResourceError
from proxyless_mesh.model import (
    CircuitBreakers,
    FaultAbort,
    FaultConfig,
    FaultDelay,
    HeaderMutation,
    MaglevConfig,
    OutlierDetection,
    RedirectAction,
    RetryBudget,
    RingHashConfig,
    SlowStartConfig,
)
from proxyless_mesh.xds_client._message import enum_name, unpack_any

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
FAULT_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
FILTER_CONFIG_TYPE_URL = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
FILTER_CONFIG = "envoy.config.route.v3.FilterConfig"
_FAULT = "envoy.extensions.filters.http.fault.v3.HTTPFault"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
MAX_RING_SIZE = 8 * 1024 * 1024
MAX_MAGLEV_TABLE = 5000011

# Enum numbers of the Envoy protos (xds_schema.txt lists them by name).
_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}  # FractionalPercent HUNDRED, ...
# RedirectAction MOVED_PERMANENTLY, FOUND, SEE_OTHER, TEMPORARY_REDIRECT, PERMANENT_REDIRECT
_REDIRECT_CODES = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}
_APPEND = 0  # HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
_OVERWRITE = 2  # HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_XX_HASH = 0  # Cluster.RingHashLbConfig.XX_HASH
_DEFAULT_PRIORITY = 0  # RoutingPriority.DEFAULT


def seconds(duration: Any, where: str) -> float:
    """A Duration in seconds; negative or malformed durations are NACKed (as gRPC)."""
    if duration.seconds < 0 or not 0 <= duration.nanos < 1_000_000_000:
        raise XdsResourceError(f"{where}: invalid duration")
    return float(duration.seconds + duration.nanos / 1e9)


def fraction_percent(fp: Any, where: str) -> float:
    """A FractionalPercent as 0..100 (above 100 % is capped, as Envoy and gRPC do)."""
    denominator = _DENOMINATORS.get(fp.denominator)
    if denominator is None:
        raise XdsResourceError(f"{where}: unknown denominator {fp.denominator}")
    return min(100.0, float(fp.numerator) * 100.0 / denominator)


def _percent(value: float, where: str) -> float:
    if not 0.0 <= value <= 100.0:
        raise XdsResourceError(f"{where}: percentage {value} is not within 0..100")
    return float(value)


# --- Cluster ----------------------------------------------------------------


def ring_hash(msg: Any) -> RingHashConfig:
    config = msg.ring_hash_lb_config
    if config.hash_function != _XX_HASH:
        raise XdsResourceError("ring_hash_lb_config.hash_function: only XX_HASH is supported")
    low = config.minimum_ring_size.value if config.HasField("minimum_ring_size") else 1024
    high = config.maximum_ring_size.value if config.HasField("maximum_ring_size") else MAX_RING_SIZE
    if high > MAX_RING_SIZE or low > MAX_RING_SIZE:
        raise XdsResourceError(f"ring_hash_lb_config: ring sizes must be <= {MAX_RING_SIZE}")
    if low == 0 or low > high:
        raise XdsResourceError(
            f"ring_hash_lb_config: min_ring_size {low} must be in 1..max_ring_size ({high})"
        )
    return RingHashConfig(minimum_ring_size=low, maximum_ring_size=high)


def maglev(msg: Any) -> MaglevConfig:
    config = msg.maglev_lb_config
    size = config.table_size.value if config.HasField("table_size") else 65537
    if size >= MAX_MAGLEV_TABLE or not _is_prime(size):
        raise XdsResourceError(
            f"maglev_lb_config.table_size {size} must be a prime below {MAX_MAGLEV_TABLE}"
        )
    return MaglevConfig(table_size=size)


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def slow_start(msg: Any) -> SlowStartConfig | None:
    which = msg.WhichOneof("lb_config")
    if which not in ("round_robin_lb_config", "least_request_lb_config"):
        return None
    config = getattr(msg, which)
    if not config.HasField("slow_start_config"):
        return None
    ss = config.slow_start_config
    where = f"{which}.slow_start_config"
    window = seconds(ss.slow_start_window, f"{where}.slow_start_window")
    if window <= 0:
        return None  # Envoy: no window, no slow start
    aggression = ss.aggression.default_value if ss.HasField("aggression") else 1.0
    if aggression <= 0:
        raise XdsResourceError(f"{where}.aggression must be greater than 0")
    min_weight = ss.min_weight_percent.value if ss.HasField("min_weight_percent") else 10.0
    return SlowStartConfig(
        window=window,
        aggression=aggression,
        min_weight_percent=_percent(min_weight, f"{where}.min_weight_percent"),
    )


def outlier_detection(msg: Any) -> OutlierDetection | None:
    """Envoy's detectors with Envoy's defaults; a detector whose enforcing
    percentage is 0 is off (None)."""
    if not msg.HasField("outlier_detection"):
        return None
    od = msg.outlier_detection
    where = "outlier_detection"

    def value(field: str, default: int) -> int:
        return int(getattr(od, field).value) if od.HasField(field) else default

    for field in (
        "enforcing_consecutive_5xx",
        "enforcing_consecutive_gateway_failure",
        "enforcing_consecutive_local_origin_failure",
        "enforcing_success_rate",
        "enforcing_failure_percentage",
        "max_ejection_percent",
    ):
        if value(field, 0) > 100:
            raise XdsResourceError(f"{where}.{field} must be <= 100")
    split = od.split_external_local_origin_errors
    local = value("consecutive_local_origin_failure", 5)
    return OutlierDetection(
        consecutive_5xx=(
            value("consecutive_5xx", 5) if value("enforcing_consecutive_5xx", 100) else None
        ),
        consecutive_gateway_failure=(
            value("consecutive_gateway_failure", 5)
            if value("enforcing_consecutive_gateway_failure", 0)
            else None
        ),
        consecutive_local_origin_failure=(
            local if split and value("enforcing_consecutive_local_origin_failure", 100) else None
        ),
        split_external_local_origin_errors=split,
        interval=_duration_or(od, "interval", 10.0, where),
        base_ejection_time=_duration_or(od, "base_ejection_time", 30.0, where),
        max_ejection_time=_duration_or(od, "max_ejection_time", 300.0, where),
        max_ejection_percent=value("max_ejection_percent", 10),
    )


def _duration_or(msg: Any, field: str, default: float, where: str) -> float:
    if not msg.HasField(field):
        return default
    return seconds(getattr(msg, field), f"{where}.{field}")


def circuit_breakers(msg: Any) -> CircuitBreakers:
    """The DEFAULT-priority thresholds (the first such entry, as Envoy and gRPC)."""
    for i, t in enumerate(msg.circuit_breakers.thresholds):
        if t.priority != _DEFAULT_PRIORITY:
            continue
        budget = None
        if t.HasField("retry_budget"):
            rb = t.retry_budget
            percent = rb.budget_percent.value if rb.HasField("budget_percent") else 20.0
            budget = RetryBudget(
                budget_percent=_percent(percent, f"circuit_breakers.thresholds[{i}].retry_budget"),
                min_retry_concurrency=(
                    rb.min_retry_concurrency.value if rb.HasField("min_retry_concurrency") else 3
                ),
            )

        def get(field: str, default: int, t: Any = t) -> int:
            return int(getattr(t, field).value) if t.HasField(field) else default

        return CircuitBreakers(
            max_connections=get("max_connections", 1024),
            max_pending_requests=get("max_pending_requests", 1024),
            max_requests=get("max_requests", 1024),
            max_retries=get("max_retries", 3),
            retry_budget=budget,
        )
    return CircuitBreakers()


def panic_threshold(msg: Any) -> float:
    lb = msg.common_lb_config
    if not lb.HasField("healthy_panic_threshold"):
        return 50.0
    return _percent(lb.healthy_panic_threshold.value, "common_lb_config.healthy_panic_threshold")


def http_options(msg: Any) -> tuple[float | None, int | None]:
    """(idle_timeout, max_requests_per_connection) from HttpProtocolOptions."""
    if HTTP_PROTOCOL_OPTIONS not in msg.typed_extension_protocol_options:
        return None, None
    packed = msg.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS]
    if packed.type_url.rsplit("/", 1)[-1] != _HTTP_OPTIONS:
        raise XdsResourceError(
            f"typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS}] holds {packed.type_url!r}"
        )
    options = unpack_any(packed, _HTTP_OPTIONS, "HttpProtocolOptions")
    common = options.common_http_protocol_options
    where = "HttpProtocolOptions.common_http_protocol_options"
    idle = (
        seconds(common.idle_timeout, f"{where}.idle_timeout")
        if common.HasField("idle_timeout")
        else None
    )
    per_conn = (
        common.max_requests_per_connection.value
        if common.HasField("max_requests_per_connection")
        else None
    )
    return idle or None, per_conn or None


# --- Route ------------------------------------------------------------------


def fault(route: Any, vhost: Any, where: str) -> FaultConfig | None:
    """The HTTPFault that applies to a route: its own, else its virtual host's
    (the most specific wins, as in gRPC). Found by type, not by filter name, since
    the HCM that names the filter is a different resource."""
    for owner, owner_where in ((route, where), (vhost, "virtual_host")):
        for name, packed in sorted(owner.typed_per_filter_config.items()):
            config = _fault_message(packed, f"{owner_where}.typed_per_filter_config[{name}]")
            if config is not None:
                return _fault(config, f"{owner_where}.typed_per_filter_config[{name}]")
    return None


def _fault_message(packed: Any, where: str) -> Any:
    if packed.type_url == FILTER_CONFIG_TYPE_URL:
        packed = unpack_any(packed, FILTER_CONFIG, where).config
    if packed.type_url != FAULT_TYPE_URL:
        return None
    return unpack_any(packed, _FAULT, f"{where}: HTTPFault")


def _fault(config: Any, where: str) -> FaultConfig | None:
    delay = abort = None
    if config.HasField("delay"):
        d = config.delay
        if d.WhichOneof("fault_delay_secifier") != "fixed_delay":
            raise XdsResourceError(f"{where}.delay: only fixed_delay is supported")
        delay = FaultDelay(
            delay=seconds(d.fixed_delay, f"{where}.delay.fixed_delay"),
            percentage=_fault_percentage(d, f"{where}.delay.percentage"),
        )
    if config.HasField("abort"):
        a = config.abort
        which = a.WhichOneof("error_type")
        percentage = _fault_percentage(a, f"{where}.abort.percentage")
        if which == "http_status":
            if not 200 <= a.http_status < 600:
                raise XdsResourceError(f"{where}.abort.http_status {a.http_status} not in 200..599")
            abort = FaultAbort(percentage=percentage, http_status=a.http_status)
        elif which == "grpc_status":
            if not 0 <= a.grpc_status <= 16:
                raise XdsResourceError(f"{where}.abort.grpc_status {a.grpc_status} not in 0..16")
            abort = FaultAbort(percentage=percentage, grpc_status=a.grpc_status)
        else:
            raise XdsResourceError(f"{where}.abort: {which or 'no error type'} is not supported")
    if delay is None and abort is None:
        return None
    return FaultConfig(delay=delay, abort=abort)


def _fault_percentage(msg: Any, where: str) -> float:
    # Envoy: an unset percentage means every request.
    return fraction_percent(msg.percentage, where) if msg.HasField("percentage") else 100.0


def redirect(r: Any, where: str) -> RedirectAction:
    which = r.WhichOneof("path_rewrite_specifier")
    if which == "regex_rewrite":
        raise XdsResourceError(f"{where}.regex_rewrite is not supported")
    if r.strip_query:
        raise XdsResourceError(f"{where}.strip_query is not supported")
    code = _REDIRECT_CODES.get(r.response_code)
    if code is None:
        raise XdsResourceError(f"{where}.response_code {r.response_code} is not supported")
    scheme_kind = r.WhichOneof("scheme_rewrite_specifier")
    scheme = "https" if scheme_kind == "https_redirect" and r.https_redirect else None
    if scheme_kind == "scheme_redirect":
        scheme = r.scheme_redirect.lower()
    return RedirectAction(
        response_code=code,
        scheme=scheme,
        host=r.host_redirect or None,
        port=r.port_redirect or None,
        path=r.path_redirect if which == "path_redirect" else None,
        prefix_rewrite=r.prefix_rewrite if which == "prefix_rewrite" else None,
    )


def header_mutation(to_add: Any, to_remove: Any, where: str) -> HeaderMutation:
    """Envoy's HeaderValueOptions: OVERWRITE_IF_EXISTS_OR_ADD is a set, the default
    APPEND_IF_EXISTS_OR_ADD an add (the deprecated `append` flag, when given, decides)."""
    sets: list[tuple[str, str]] = []
    adds: list[tuple[str, str]] = []
    for i, option in enumerate(to_add):
        key = option.header.key.lower()
        if not key or key.startswith(":") or key == "host":
            raise XdsResourceError(f"{where}[{i}]: header {key!r} cannot be modified")
        value = option.header.value or option.header.raw_value.decode("utf-8", "replace")
        if option.HasField("append"):
            append = option.append.value
        elif option.append_action in (_APPEND, _OVERWRITE):
            append = option.append_action == _APPEND
        else:
            action = enum_name(
                "envoy.config.core.v3.HeaderValueOption.HeaderAppendAction", option.append_action
            )
            raise XdsResourceError(f"{where}[{i}]: append_action {action} is not supported")
        (adds if append else sets).append((key, value))
    return HeaderMutation(
        set=tuple(sets), add=tuple(adds), remove=tuple(name.lower() for name in to_remove)
    )
