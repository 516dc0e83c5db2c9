"""DestinationRule trafficPolicy -> model objects: load balancing, outlier
detection, connection pools, per port.

Every Istio field is either read, named as "not supported yet", or reported as
unknown; a value Envoy or gRPC would refuse (a Maglev table size that is not
prime) is refused here, where the operator can still see which file it is in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model import (
    ClientTls,
    ConnectionPool,
    ConsistentHash,
    LoadBalancerSettings,
    LocalityLbSetting,
    LocalityRule,
    OutlierDetection,
    PortTrafficPolicy,
    TrafficPolicy,
)
from .schema import (
    MISSING,
    Problems,
    check_enum,
    check_int,
    check_str,
    get_bool,
    get_int,
    get_list,
    get_object,
    get_str,
    index,
    join,
    read_object,
)
from .syntax import parse_duration

LB_POLICIES = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM")
UINT32_MAX = 2**32 - 1
MAX_RING_SIZE = 8 * 1024 * 1024  # gRPC's and Envoy's upper bound for minimum_ring_size
MAX_MAGLEV_TABLE = 5000011  # Envoy's bound (exclusive)

_TP_FIELDS = ("loadBalancer", "connectionPool", "outlierDetection", "portLevelSettings", "tls")
_TP_UNSUPPORTED = ("tunnel", "proxyProtocol")
_PORT_FIELDS = ("port", "loadBalancer", "connectionPool", "outlierDetection", "tls")
TLS_MODES = ("ISTIO_MUTUAL", "DISABLE", "SIMPLE", "MUTUAL")
_TLS_UNSUPPORTED_MODES = ()
_FILE_FIELDS = ("caCertificates", "clientCertificate", "privateKey")
_TLS_FIELDS = ("mode", "sni", *_FILE_FIELDS, "subjectAltNames", "credentialName")
# SIMPLE/MUTUAL take certificates as files on the client (the library, Envoy);
# credentialName (a TLS Secret's tls.crt/tls.key/ca.crt) at gateways only, as Istio.
_TLS_UNSUPPORTED = ("insecureSkipVerify", "caCrl")
_LB_FIELDS = ("simple", "consistentHash", "localityLbSetting", "warmupDurationSecs")
_LB_UNSUPPORTED = ("warmup",)
_HASH_KEYS = ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")
_HASH_FIELDS = (*_HASH_KEYS, "ringHash", "maglev", "minimumRingSize")
_LOCALITY_FIELDS = ("enabled", "distribute", "failover", "failoverPriority")
_OUTLIER_FIELDS = (
    "consecutive5xxErrors",
    "consecutiveGatewayErrors",
    "consecutiveLocalOriginFailures",
    "splitExternalLocalOriginErrors",
    "interval",
    "baseEjectionTime",
    "maxEjectionPercent",
    "minHealthPercent",
)
_OUTLIER_UNSUPPORTED = ("consecutiveErrors",)
_TCP_FIELDS = ("maxConnections", "connectTimeout")
_TCP_UNSUPPORTED = ("tcpKeepalive", "maxConnectionDuration", "idleTimeout")
_HTTP_FIELDS = (
    "http1MaxPendingRequests",
    "http2MaxRequests",
    "maxRequestsPerConnection",
    "maxRetries",
    "idleTimeout",
)
_HTTP_UNSUPPORTED = ("h2UpgradePolicy", "useClientProtocol", "maxConcurrentStreams")


def parse_traffic_policy(p: Problems, obj: Mapping[str, Any], path: str) -> TrafficPolicy | None:
    """`obj.trafficPolicy`, or None when absent."""
    policy = get_object(p, obj, "trafficPolicy", path, _TP_FIELDS, _TP_UNSUPPORTED)
    if policy is None:
        return None
    where = join(path, "trafficPolicy")
    ports: list[PortTrafficPolicy] = []
    for i, raw in enumerate(get_list(p, policy, "portLevelSettings", where)):
        port_where = index(join(where, "portLevelSettings"), i)
        item = read_object(p, raw, port_where, _PORT_FIELDS)
        selector = get_object(p, item, "port", port_where, ("number",), required=True)
        number = None
        if selector is not None:
            number = get_int(
                p, selector, "number", join(port_where, "port"), required=True, low=1, high=65535
            )
        if number is not None and any(port.port == number for port in ports):
            p.add(join(port_where, "port.number"), f"port {number} is set twice")
        ports.append(
            PortTrafficPolicy(
                number or 0, *_policy_fields(p, item, port_where), tls=_tls(p, item, port_where)
            )
        )
    return TrafficPolicy(
        *_policy_fields(p, policy, where),
        port_level_settings=tuple(ports),
        tls=_tls(p, policy, where),
    )


def _tls(p: Problems, obj: Mapping[str, Any], path: str) -> ClientTls | None:
    """`tls`: ISTIO_MUTUAL or DISABLE. Like Istio, a `tls` without `mode` is DISABLE."""
    tls = get_object(p, obj, "tls", path, _TLS_FIELDS, _TLS_UNSUPPORTED)
    if tls is None:
        return None
    where = join(path, "tls")
    mode = get_str(p, tls, "mode", where) or "DISABLE"
    checked = check_enum(p, mode, join(where, "mode"), TLS_MODES, _TLS_UNSUPPORTED_MODES)
    sni = get_str(p, tls, "sni", where) or ""
    if sni and checked == "DISABLE":
        p.add(join(where, "sni"), "has no effect with mode DISABLE")
    files = {key: get_str(p, tls, key, where) or "" for key in _FILE_FIELDS}
    names = tuple(
        check_str(p, raw, index(join(where, "subjectAltNames"), i)) or ""
        for i, raw in enumerate(get_list(p, tls, "subjectAltNames", where))
    )
    credential = get_str(p, tls, "credentialName", where) or ""
    origination = checked in ("SIMPLE", "MUTUAL")
    for key in (*_FILE_FIELDS, "subjectAltNames", "credentialName"):
        if key in tls and not origination:
            p.add(join(where, key), f"is for SIMPLE or MUTUAL, not {checked}")
    if checked == "MUTUAL" and not credential:
        for key in ("clientCertificate", "privateKey"):
            if not files[key]:
                p.add(join(where, key), f"{MISSING} (MUTUAL presents a client certificate)")
    return ClientTls(
        checked or "DISABLE",
        sni,
        ca_certificates=files["caCertificates"],
        client_certificate=files["clientCertificate"],
        private_key=files["privateKey"],
        subject_alt_names=names,
        credential_name=credential,
    )


def _policy_fields(
    p: Problems, obj: Mapping[str, Any], where: str
) -> tuple[LoadBalancerSettings | None, ConnectionPool | None, OutlierDetection | None]:
    return (
        _load_balancer(p, obj, where),
        _connection_pool(p, obj, where),
        _outlier_detection(p, obj, where),
    )


def _load_balancer(p: Problems, obj: Mapping[str, Any], path: str) -> LoadBalancerSettings | None:
    lb = get_object(p, obj, "loadBalancer", path, _LB_FIELDS, _LB_UNSUPPORTED)
    if lb is None:
        return None
    where = join(path, "loadBalancer")
    simple = get_str(p, lb, "simple", where)
    if simple == "UNSPECIFIED":  # Istio: "Istio will select an appropriate default"
        simple = None
    elif simple == "LEAST_CONN":
        p.add(join(where, "simple"), "LEAST_CONN is deprecated in Istio; use LEAST_REQUEST")
        simple = None
    elif simple == "PASSTHROUGH":
        p.add(
            join(where, "simple"),
            "PASSTHROUGH is not supported: it forwards to the original destination "
            "address, which a proxyless client does not have (it dials by service name); "
            "use ROUND_ROBIN, LEAST_REQUEST or RANDOM",
        )
        simple = None
    elif simple is not None:
        simple = check_enum(p, simple, join(where, "simple"), LB_POLICIES)
    consistent = _consistent_hash(p, lb, where)
    if simple is not None and consistent is not None:
        p.add(where, "set only one of simple and consistentHash")
    warmup = _duration(p, lb, "warmupDurationSecs", where)
    if warmup is not None and (consistent is not None or simple == "RANDOM"):
        p.add(
            join(where, "warmupDurationSecs"),
            "slow start works only with ROUND_ROBIN or LEAST_REQUEST (Envoy)",
        )
    return LoadBalancerSettings(
        simple=simple,
        consistent_hash=consistent,
        locality_lb_setting=_locality(p, lb, where),
        warmup_duration=warmup,
    )


def _consistent_hash(p: Problems, lb: Mapping[str, Any], path: str) -> ConsistentHash | None:
    obj = get_object(p, lb, "consistentHash", path, _HASH_FIELDS)
    if obj is None:
        return None
    where = join(path, "consistentHash")
    keys = [key for key in _HASH_KEYS if key in obj]
    if len(keys) != 1:
        p.add(where, f"must set exactly one of {', '.join(_HASH_KEYS)}")
        return None
    key = keys[0]
    name, cookie_path, cookie_ttl = "", "", None
    if key == "httpHeaderName":
        name = (get_str(p, obj, key, where) or "").lower()
        kind = "header"
    elif key == "httpQueryParameterName":
        name = get_str(p, obj, key, where) or ""
        kind = "query_parameter"
    elif key == "useSourceIp":
        if get_bool(p, obj, key, where) is not True:
            p.add(join(where, key), "must be true when it is the hash key")
        kind = "source_ip"
    else:
        cookie_where = join(where, key)
        cookie = get_object(p, obj, key, where, ("name", "path", "ttl"), ("attributes",)) or {}
        name = get_str(p, cookie, "name", cookie_where, required=True) or ""
        cookie_path = get_str(p, cookie, "path", cookie_where) or ""
        cookie_ttl = _duration(p, cookie, "ttl", cookie_where)
        kind = "cookie"
    if kind != "source_ip" and name == "" and (obj.get(key) == "" or obj.get(key) == {"name": ""}):
        p.add(join(where, key), "must not be empty")
    tables = [t for t in ("ringHash", "maglev", "minimumRingSize") if t in obj]
    if len(tables) > 1:
        p.add(where, f"set only one of ringHash, maglev, minimumRingSize (got {tables})")
    ring_size = table_size = None
    ring = get_object(p, obj, "ringHash", where, ("minimumRingSize",))
    if ring is not None:
        ring_size = _ring_size(p, ring, join(where, "ringHash"))
    elif "minimumRingSize" in obj:
        ring_size = _ring_size(p, obj, where)
    maglev = get_object(p, obj, "maglev", where, ("tableSize",))
    if maglev is not None:
        table_size = get_int(p, maglev, "tableSize", join(where, "maglev"), low=1)
        if table_size is not None and (table_size >= MAX_MAGLEV_TABLE or not _prime(table_size)):
            p.add(
                join(where, "maglev.tableSize"),
                f"must be a prime number below {MAX_MAGLEV_TABLE} (e.g. 65537), got {table_size}",
            )
    return ConsistentHash(
        key=kind,
        name=name,
        cookie_path=cookie_path,
        cookie_ttl=cookie_ttl,
        maglev=maglev is not None,
        minimum_ring_size=ring_size,
        table_size=table_size,
    )


def _ring_size(p: Problems, obj: Mapping[str, Any], where: str) -> int | None:
    return get_int(p, obj, "minimumRingSize", where, low=1, high=MAX_RING_SIZE)


def _prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))


def _locality(p: Problems, lb: Mapping[str, Any], path: str) -> LocalityLbSetting | None:
    obj = get_object(p, lb, "localityLbSetting", path, _LOCALITY_FIELDS)
    if obj is None:
        return None
    where = join(path, "localityLbSetting")
    enabled = get_bool(p, obj, "enabled", where)
    distribute: list[LocalityRule] = []
    for i, raw in enumerate(get_list(p, obj, "distribute", where)):
        item_where = index(join(where, "distribute"), i)
        item = read_object(p, raw, item_where, ("from", "to"))
        source = _locality_pattern(p, item, "from", item_where)
        weights: dict[str, int] = {}
        raw_to = item.get("to")
        to_where = join(item_where, "to")
        if "to" not in item:
            p.add(to_where, "missing required field")
        elif not isinstance(raw_to, Mapping):
            p.add(to_where, "expected a mapping of locality to weight")
        else:
            for locality, weight in raw_to.items():
                value = check_int(p, weight, join(to_where, locality), low=1)
                if isinstance(locality, str) and value is not None:
                    weights[locality] = value
            total = sum(weights.values())
            if raw_to and total != 100:
                p.add(to_where, f"weights must sum to 100, got {total}")
        distribute.append(LocalityRule(source, weights))
    failover: list[LocalityRule] = []
    for i, raw in enumerate(get_list(p, obj, "failover", where)):
        item_where = index(join(where, "failover"), i)
        item = read_object(p, raw, item_where, ("from", "to"))
        source = _locality_pattern(p, item, "from", item_where)
        target = _locality_pattern(p, item, "to", item_where)
        for key, region in (("from", source), ("to", target)):
            if "/" in region or "*" in region:
                p.add(join(item_where, key), f'expected a region, got "{region}"')
        if source and source == target:
            p.add(item_where, "from and to must be different regions")
        failover.append(LocalityRule(source, {target: 0}))
    priority: list[str] = []
    for i, raw in enumerate(get_list(p, obj, "failoverPriority", where)):
        label = check_str(p, raw, index(join(where, "failoverPriority"), i))
        if label:
            priority.append(label)
    if distribute and (failover or priority):
        p.add(where, "set only one of distribute and failover/failoverPriority (as Istio)")
    elif failover and priority:
        p.add(where, "failover together with failoverPriority is not supported yet: use one")
    return LocalityLbSetting(
        enabled=enabled is not False,
        distribute=tuple(distribute),
        failover=tuple(failover),
        failover_priority=tuple(priority),
    )


def _locality_pattern(p: Problems, obj: Mapping[str, Any], key: str, where: str) -> str:
    value = get_str(p, obj, key, where, required=True) or ""
    if value.count("/") > 2:
        p.add(join(where, key), f'expected "region/zone/subzone" (parts may be "*"), got "{value}"')
    return value


def _outlier_detection(p: Problems, obj: Mapping[str, Any], path: str) -> OutlierDetection | None:
    od = get_object(p, obj, "outlierDetection", path, _OUTLIER_FIELDS, _OUTLIER_UNSUPPORTED)
    if od is None:
        return None
    where = join(path, "outlierDetection")
    split = bool(get_bool(p, od, "splitExternalLocalOriginErrors", where))
    local = _count(p, od, "consecutiveLocalOriginFailures", where)
    if local is not None and not split:
        p.add(
            join(where, "consecutiveLocalOriginFailures"),
            "has no effect unless splitExternalLocalOriginErrors is true (Envoy)",
        )
    interval = _duration(p, od, "interval", where)
    if interval == 0:
        p.add(join(where, "interval"), "must be greater than 0")
    return OutlierDetection(
        consecutive_5xx_errors=get_int(
            p, od, "consecutive5xxErrors", where, low=0, high=UINT32_MAX
        ),
        consecutive_gateway_errors=get_int(
            p, od, "consecutiveGatewayErrors", where, low=0, high=UINT32_MAX
        ),
        consecutive_local_origin_failures=local,
        split_external_local_origin_errors=split,
        interval=interval,
        base_ejection_time=_duration(p, od, "baseEjectionTime", where),
        max_ejection_percent=get_int(p, od, "maxEjectionPercent", where, low=0, high=100),
        min_health_percent=get_int(p, od, "minHealthPercent", where, low=0, high=100),
    )


def _connection_pool(p: Problems, obj: Mapping[str, Any], path: str) -> ConnectionPool | None:
    pool = get_object(p, obj, "connectionPool", path, ("tcp", "http"))
    if pool is None:
        return None
    where = join(path, "connectionPool")
    tcp = get_object(p, pool, "tcp", where, _TCP_FIELDS, _TCP_UNSUPPORTED) or {}
    http = get_object(p, pool, "http", where, _HTTP_FIELDS, _HTTP_UNSUPPORTED) or {}
    tcp_where, http_where = join(where, "tcp"), join(where, "http")
    connect_timeout = _duration(p, tcp, "connectTimeout", tcp_where)
    if connect_timeout == 0:
        p.add(join(tcp_where, "connectTimeout"), "must be greater than 0")
    return ConnectionPool(
        max_connections=get_int(p, tcp, "maxConnections", tcp_where, low=1, high=UINT32_MAX),
        connect_timeout=connect_timeout,
        http1_max_pending_requests=_limit(p, http, "http1MaxPendingRequests", http_where),
        http2_max_requests=_limit(p, http, "http2MaxRequests", http_where),
        max_requests_per_connection=_limit(p, http, "maxRequestsPerConnection", http_where),
        max_retries=get_int(p, http, "maxRetries", http_where, low=0, high=UINT32_MAX),
        idle_timeout=_duration(p, http, "idleTimeout", http_where),
    )


def _count(p: Problems, obj: Mapping[str, Any], key: str, where: str) -> int | None:
    return get_int(p, obj, key, where, low=0, high=UINT32_MAX)


def _limit(p: Problems, obj: Mapping[str, Any], key: str, where: str) -> int | None:
    return get_int(p, obj, key, where, low=1, high=UINT32_MAX)


def _duration(p: Problems, obj: Mapping[str, Any], key: str, where: str) -> float | None:
    """An Istio duration string ("10s", "1.5m") in seconds, or None when absent/invalid."""
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


__all__ = ["LB_POLICIES", "TLS_MODES", "parse_traffic_policy"]
