"""ServiceEntry and WorkloadEntry specs -> model objects.

These declare what exists (services, their ports and instances); routing
kinds refer to them, see parse_routing.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from .model import Meta, ServiceEntry, ServicePort, WorkloadEndpoint, WorkloadEntry
from .schema import (
    MISSING,
    NOT_SUPPORTED,
    Problems,
    check_enum,
    check_host,
    check_int,
    check_str,
    get_int,
    get_list,
    get_object,
    get_str,
    get_str_map,
    index,
    join,
    read_object,
)
from .visibility import parse_export_to

# HTTPS and TLS (like TCP) get clusters and endpoints, which gateways route by
# SNI (VirtualService `tls`); the library routes only the HTTP family.
SUPPORTED_PROTOCOLS = ("HTTP", "HTTP2", "GRPC", "TCP", "HTTPS", "TLS")
# Istio protocols this mesh does not carry yet: named, so the error can say so.
UNSUPPORTED_PROTOCOLS = ("GRPC-WEB", "MONGO", "MYSQL", "REDIS", "UDP")
RESOLUTIONS = ("STATIC", "NONE", "DNS", "DNS_ROUND_ROBIN")
# Resolutions that, without endpoints, send requests to the host itself (see
# ServiceEntry.passthrough): Istio's NONE goes to the original destination and
# DNS resolves the host name; in-process both mean connecting to the host by name.
PASSTHROUGH_RESOLUTIONS = ("NONE", "DNS", "DNS_ROUND_ROBIN")
DNS_RESOLUTIONS = ("DNS", "DNS_ROUND_ROBIN")
LOCATIONS = ("MESH_INTERNAL", "MESH_EXTERNAL")

_SE_FIELDS = (
    "hosts",
    "addresses",
    "ports",
    "resolution",
    "location",
    "endpoints",
    "workloadSelector",
    "exportTo",
)
_SE_UNSUPPORTED = ("subjectAltNames",)
# Where Istio matches traffic by destination IP (a listener on address:port for
# TCP-like ports, a CIDR, a passthrough entry's original destination), which
# needs traffic capture this mesh does not have: clients here name what they call.
_BY_DESTINATION_IP = ("TCP", "TLS", "HTTPS")
_PORT_FIELDS = ("number", "protocol", "name", "targetPort")
_ENDPOINT_FIELDS = (
    "address",
    "ports",
    "labels",
    "locality",
    "weight",
    "network",
    "serviceAccount",
)
_MAX_PORT = 65535


def parse_service_entry(p: Problems, meta: Meta, spec: Mapping[str, Any]) -> ServiceEntry:
    """Istio's defaults: no `resolution` is NONE, no `location` is MESH_EXTERNAL."""
    spec = read_object(p, spec, "spec", _SE_FIELDS, _SE_UNSUPPORTED)
    hosts = _parse_hosts(p, spec)
    resolution = "NONE"
    text = get_str(p, spec, "resolution", "spec")
    if text is not None:
        resolution = check_enum(p, text, "spec.resolution", RESOLUTIONS) or ""
    # DNS with endpoints: their names are resolved by the control plane
    # (registry/dns.py); without endpoints the host itself is passed through.
    dns = resolution in DNS_RESOLUTIONS and "endpoints" in spec
    passthrough = resolution in PASSTHROUGH_RESOLUTIONS and not dns
    if passthrough and ("endpoints" in spec or "workloadSelector" in spec):
        given = "NONE (Istio's default when unset)" if text is None else resolution
        field = "endpoints" if "endpoints" in spec else "workloadSelector"
        p.add(
            "spec.resolution",
            f"{given} with spec.{field} is {NOT_SUPPORTED}: set resolution: STATIC "
            "to send requests to the listed instances",
        )
    location = "MESH_EXTERNAL"
    text = get_str(p, spec, "location", "spec")
    if text is not None:
        location = check_enum(p, text, "spec.location", LOCATIONS) or location
    ports = _parse_ports(p, spec, passthrough)
    addresses = _parse_addresses(p, spec, hosts, ports, passthrough)
    port_names = {port.name for port in ports}
    endpoints = tuple(
        parse_endpoint(p, raw, index("spec.endpoints", i), port_names, names=dns)
        for i, raw in enumerate(get_list(p, spec, "endpoints", "spec"))
    )
    selector_obj = get_object(p, spec, "workloadSelector", "spec", ("labels",))
    selector = None
    if selector_obj is not None:
        selector = get_str_map(p, selector_obj, "labels", "spec.workloadSelector")
        if "endpoints" in spec:
            p.add(
                "spec.workloadSelector",
                "cannot be used together with spec.endpoints (Istio forbids it)",
            )
    return ServiceEntry(
        meta=meta,
        hosts=hosts,
        ports=ports,
        addresses=addresses,
        resolution=resolution,
        location=location,
        endpoints=endpoints,
        workload_selector=selector,
        export_to=parse_export_to(p, spec),
    )


def parse_workload_entry(p: Problems, meta: Meta, spec: Mapping[str, Any]) -> WorkloadEntry:
    return WorkloadEntry(meta=meta, endpoint=parse_endpoint(p, spec, "spec", None))


def _parse_hosts(p: Problems, spec: Mapping[str, Any]) -> tuple[str, ...]:
    hosts: list[str] = []
    for i, raw in enumerate(get_list(p, spec, "hosts", "spec", required=True, non_empty=True)):
        where = index("spec.hosts", i)
        host = check_host(p, raw, where)
        if host and host in hosts:
            p.add(where, f'duplicate host "{host}"')
        elif host:
            hosts.append(host)
    return tuple(hosts)


def _parse_ports(
    p: Problems, spec: Mapping[str, Any], passthrough: bool
) -> tuple[ServicePort, ...]:
    """`passthrough`: nothing is translated for these ports (see
    ServiceEntry.passthrough), so any Istio protocol is accepted."""
    ports: list[ServicePort] = []
    names: set[str] = set()
    numbers: set[int] = set()
    for i, raw in enumerate(get_list(p, spec, "ports", "spec", required=True, non_empty=True)):
        where = index("spec.ports", i)
        obj = read_object(p, raw, where, _PORT_FIELDS)
        number = get_int(p, obj, "number", where, required=True, low=1, high=_MAX_PORT)
        name = get_str(p, obj, "name", where, required=True)
        if name == "":
            p.add(join(where, "name"), "must not be empty")
        target = get_int(p, obj, "targetPort", where, low=1, high=_MAX_PORT)
        protocol = _parse_protocol(p, obj, where, name or "", passthrough)
        if name and name in names:
            p.add(join(where, "name"), f'duplicate port name "{name}"')
        if number is not None and number in numbers:
            p.add(join(where, "number"), f"duplicate port number {number}")
        names.add(name or "")
        numbers.add(number or 0)
        ports.append(ServicePort(number or 0, protocol or "TCP", name or "", target))
    return tuple(ports)


def _parse_protocol(
    p: Problems, obj: Mapping[str, Any], where: str, name: str, passthrough: bool
) -> str | None:
    """The port's protocol, upper-cased.

    Like Istio, a port without `protocol` (or with ""), takes it from its
    name's prefix ("http-web" is HTTP, "grpc" is GRPC). Where Istio would sniff
    the protocol from the traffic, this mesh asks for it instead: requests are
    translated per protocol before any byte is sent. A passthrough entry's
    ports take any Istio protocol (TCP when neither says).
    """
    text = get_str(p, obj, "protocol", where)
    field = join(where, "protocol")
    if text is None and "protocol" in obj:
        return None
    if not text:
        prefix = name.split("-", 1)[0].upper()
        if prefix in SUPPORTED_PROTOCOLS or (passthrough and prefix in UNSUPPORTED_PROTOCOLS):
            return prefix
        if passthrough:
            return "TCP"
        if prefix in UNSUPPORTED_PROTOCOLS:
            p.add(field, f"{prefix} (from the port name) is {NOT_SUPPORTED}")
            return None
        p.add(field, f'{MISSING} (or name the port "<protocol>-<suffix>", e.g. "http-web")')
        return None
    if passthrough:
        return check_enum(p, text.upper(), field, (*SUPPORTED_PROTOCOLS, *UNSUPPORTED_PROTOCOLS))
    return check_enum(p, text.upper(), field, SUPPORTED_PROTOCOLS, UNSUPPORTED_PROTOCOLS)


def parse_endpoint(
    p: Problems, raw: object, where: str, port_names: set[str] | None, *, names: bool = False
) -> WorkloadEndpoint:
    """One instance; `port_names` (a ServiceEntry's) limits the names `ports` may use;
    `names`: the address may be a DNS name."""
    obj = read_object(p, raw, where, _ENDPOINT_FIELDS)
    address = _parse_address(p, obj, where, names)
    ports: dict[str, int] = {}
    if "ports" in obj:
        ports_where = join(where, "ports")
        raw_ports = obj["ports"]
        if not isinstance(raw_ports, Mapping):
            read_object(p, raw_ports, ports_where, ())  # reports the type
        else:
            for name, value in raw_ports.items():
                port_where = join(ports_where, name)
                number = check_int(p, value, port_where, low=1, high=_MAX_PORT)
                if port_names is not None and name not in port_names:
                    p.add(port_where, f'no port named "{name}" in spec.ports')
                if number is not None and isinstance(name, str):
                    ports[name] = number
    weight = 1
    if "weight" in obj:
        value = check_int(p, obj["weight"], join(where, "weight"))
        if value is not None and value < 1:
            p.add(join(where, "weight"), "weight must be >= 1")
        weight = value or 1
    locality = get_str(p, obj, "locality", where) or ""
    if locality.count("/") > 2:
        p.add(join(where, "locality"), 'expected "region/zone/subzone"')
    return WorkloadEndpoint(
        address=address,
        ports=ports,
        labels=get_str_map(p, obj, "labels", where),
        locality=locality,
        weight=weight,
        network=get_str(p, obj, "network", where) or "",
        service_account=get_str(p, obj, "serviceAccount", where) or "",
    )


def _parse_addresses(
    p: Problems,
    spec: Mapping[str, Any],
    hosts: tuple[str, ...],
    ports: tuple[ServicePort, ...],
    passthrough: bool,
) -> tuple[str, ...]:
    """`addresses`: virtual IPs by which HTTP clients may also name the service
    (Istio adds them to the route domains; the Host header picks the
    service). What Istio does with them by destination IP is refused."""
    if "addresses" not in spec:
        return ()
    result: list[str] = []
    for i, raw in enumerate(get_list(p, spec, "addresses", "spec")):
        where = index("spec.addresses", i)
        text = check_str(p, raw, where)
        if text is None:
            continue
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            p.add(where, f'"{text}" is not an IP address or CIDR range')
            continue
        if network.num_addresses > 1:
            p.add(
                where,
                f"CIDR range {text} {NOT_SUPPORTED}: a range selects traffic by destination "
                "IP, which needs traffic capture; clients here name the address they call",
            )
            continue
        result.append(str(network.network_address))
    by_ip = sorted({port.protocol for port in ports if port.protocol in _BY_DESTINATION_IP})
    if by_ip or passthrough:
        what = f"{'/'.join(by_ip)} ports" if by_ip else "a passthrough entry (no endpoints)"
        p.add(
            "spec.addresses",
            f"on {what} {NOT_SUPPORTED}: Istio would match that traffic by destination IP "
            "(a listener on address:port, no Host header), which needs traffic capture "
            "this mesh does not have",
        )
    if len(hosts) > 1 and result:
        p.add("spec.addresses", "with several hosts: which host an address names is ambiguous")
    return tuple(result)


def _parse_address(p: Problems, obj: Mapping[str, Any], where: str, names: bool) -> str:
    """An IP literal; a DNS name too when `names` (resolution DNS, resolved by
    the control plane): with STATIC nothing turns names into addresses."""
    field = join(where, "address")
    if "address" not in obj:
        p.schema(field, MISSING)
        return ""
    text = check_str(p, obj["address"], field)
    if text is None:
        return ""
    if text.startswith("unix://"):
        p.add(field, f"unix domain socket addresses are {NOT_SUPPORTED}")
        return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        if names:
            return check_host(p, text, field)
        p.add(
            field,
            f'"{text}" is not an IP address (a DNS name needs resolution: DNS or DNS_ROUND_ROBIN)',
        )
        return text
