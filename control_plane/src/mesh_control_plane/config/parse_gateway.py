"""networking.istio.io Gateway: the ports, hosts and TLS of an Envoy at the
edge of the mesh, for the gateway workloads its `selector` picks.

What is programmed into Envoy (translate/gateway.py): HTTP, HTTP2 and GRPC
servers in plaintext (optionally `tls.httpsRedirect`), HTTPS servers with
`tls.mode` SIMPLE, MUTUAL or OPTIONAL_MUTUAL (certificate from
`credentialName`; a client certificate demanded, or verified when presented)
or ISTIO_MUTUAL (the gateway's workload certificate, mesh clients only), TLS
servers with mode PASSTHROUGH (routed by SNI: VirtualService `tls`) or
AUTO_PASSTHROUGH (routed by the SNI Istio clients set, translate/gateway_sni.py)
and plaintext TCP servers (VirtualService `tcp`). Everything else Istio
defines is refused naming the field: TLS on a TCP server, certificates given
as files, cipher and version settings, `bind` and `defaultEndpoint`. Several
servers on one port must agree on plaintext HTTP, TLS or TCP (one listener per
port, as Istio builds it); TLS-terminating (HTTPS) and passthrough (TLS)
servers may share a port, told apart by SNI, but not a host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .label_selector import LabelSelector
from .model import HTTPRouteDestination, Meta
from .schema import (
    MISSING,
    NOT_SUPPORTED,
    Problems,
    check_enum,
    check_host_pattern,
    check_str,
    get_bool,
    get_int,
    get_list,
    get_object,
    get_str,
    get_str_map,
    index,
    is_dns_label,
    join,
    read_object,
)

_GW_FIELDS = ("selector", "servers")
_SERVER_FIELDS = ("port", "hosts", "tls", "name")
_SERVER_UNSUPPORTED = ("bind", "defaultEndpoint")
_PORT_FIELDS = ("number", "protocol", "name", "targetPort")
_TLS_FIELDS = ("httpsRedirect", "mode", "credentialName")
_TLS_UNSUPPORTED = (
    "serverCertificate",
    "privateKey",
    "caCertificates",
    "caCrl",
    "credentialNames",
    "tlsCertificates",
    "subjectAltNames",
    "verifyCertificateSpki",
    "verifyCertificateHash",
    "minProtocolVersion",
    "maxProtocolVersion",
    "cipherSuites",
)
PLAIN_PROTOCOLS = ("HTTP", "HTTP2", "GRPC")
TLS_PROTOCOLS = ("HTTPS",)
PASSTHROUGH_PROTOCOLS = ("TLS",)  # routed by SNI: VirtualService `tls`, or AUTO_PASSTHROUGH
TCP_PROTOCOLS = ("TCP",)  # plaintext bytes, routed by port (VirtualService `tcp`)
_LATER_PROTOCOLS = ("MONGO", "REDIS", "MYSQL", "GRPC-WEB")
TLS_MODES = (
    "SIMPLE",
    "MUTUAL",
    "OPTIONAL_MUTUAL",
    "ISTIO_MUTUAL",
    "PASSTHROUGH",
    "AUTO_PASSTHROUGH",
)
PASSTHROUGH_MODES = ("PASSTHROUGH", "AUTO_PASSTHROUGH")
CREDENTIAL_MODES = ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL")


@dataclass(frozen=True)
class GatewayHost:
    """One `servers[].hosts` entry: `namespace/host`. namespace "*" is any
    namespace's VirtualServices ("." was resolved to the Gateway's own);
    host is "*", "*.suffix" or a DNS name."""

    namespace: str
    host: str

    def admits(self, vs_namespace: str, vs_host: str) -> str | None:
        """The domain a VirtualService's host gets on this server, or None.

        Either side may be a wildcard: the more specific of the two is the
        domain (Istio's intersection of server and VirtualService hosts)."""
        if self.namespace not in ("*", vs_namespace):
            return None
        if host_covers(self.host, vs_host):
            return vs_host
        if host_covers(vs_host, self.host):
            return self.host
        return None


def host_covers(pattern: str, host: str) -> bool:
    """Whether `pattern` ("*", "*.suffix" or a name) matches every name `host`
    stands for (a wildcard host is covered by an equal or wider wildcard)."""
    if pattern == "*" or pattern == host:
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".suffix"
        return host.endswith(suffix) and host != suffix[1:]
    return False


@dataclass(frozen=True)
class ServerTls:
    mode: str = ""  # one of TLS_MODES; "" on a plaintext server
    credential_name: str = ""
    https_redirect: bool = False


@dataclass(frozen=True)
class GatewayServer:
    number: int
    protocol: str  # HTTP | HTTP2 | GRPC | HTTPS
    port_name: str
    hosts: tuple[GatewayHost, ...]
    tls: ServerTls = field(default_factory=ServerTls)
    name: str = ""
    # The route kinds it serves (a Gateway API listener's allowedRoutes.kinds,
    # the valid ones); None for an Istio server: any VirtualService.
    route_kinds: tuple[str, ...] | None = None
    # A Gateway API listener's kinds it cannot serve: (field, message) each,
    # its ResolvedRefs=False (InvalidRouteKinds); the rest is served.
    invalid_kinds: tuple[tuple[str, str], ...] = ()
    # allowedRoutes `from: Selector`: `hosts` hold the namespaces it picks
    # once every Namespace is read (gateway_api_attach.resolve_selectors).
    namespace_selector: LabelSelector | None = None

    def serves(self, kind: str) -> bool:
        return self.route_kinds is None or kind in self.route_kinds

    @property
    def terminates_tls(self) -> bool:
        return self.protocol in TLS_PROTOCOLS

    @property
    def passthrough(self) -> bool:
        return self.protocol in PASSTHROUGH_PROTOCOLS

    @property
    def tcp(self) -> bool:
        return self.protocol in TCP_PROTOCOLS


@dataclass(frozen=True)
class TlsMatch:
    """A VirtualService `tls[].match[]`: SNI names, and where it applies."""

    sni_hosts: tuple[str, ...]
    port: int | None = None
    gateways: tuple[str, ...] = ()


@dataclass(frozen=True)
class TlsRoute:
    """A VirtualService `tls[]` rule: TLS passed through by SNI (gateways only)."""

    match: tuple[TlsMatch, ...]
    route: tuple[HTTPRouteDestination, ...]


@dataclass(frozen=True)
class TcpMatch:
    """A VirtualService `tcp[].match[]`: where the rule applies."""

    port: int | None = None
    gateways: tuple[str, ...] = ()


@dataclass(frozen=True)
class TcpRoute:
    """A VirtualService `tcp[]` rule: bytes proxied to weighted destinations
    (gateways only). No `match` applies everywhere the VirtualService is bound."""

    match: tuple[TcpMatch, ...]
    route: tuple[HTTPRouteDestination, ...]

    def applies(self, gateway: str, port: int) -> bool:
        return not self.match or any(
            (not m.gateways or gateway in m.gateways) and m.port in (None, port) for m in self.match
        )


@dataclass(frozen=True)
class ParentRef:
    """A Gateway API route's parent Gateway, or one listener of it (by name or port)."""

    gateway: str  # namespace/name
    section: str = ""
    port: int | None = None

    def names(self, gateway: str, server: GatewayServer) -> bool:
        return (
            self.gateway == gateway
            and self.section in ("", server.name)
            and (self.port in (None, server.number))
        )

    def __str__(self) -> str:
        """How `meshctl gateway status` names the parent: ns/name[/section][:port]."""
        section = f"/{self.section}" if self.section else ""
        return self.gateway + section + (f":{self.port}" if self.port is not None else "")


@dataclass(frozen=True)
class Gateway:
    meta: Meta
    selector: Mapping[str, str]
    servers: tuple[GatewayServer, ...]

    def selects(self, labels: Mapping[str, str]) -> bool:
        """Istio: a Gateway applies to the gateway workloads whose labels
        include all of its selector's (an empty selector selects none here:
        it would program every gateway with every server)."""
        return bool(self.selector) and all(
            labels.get(key) == value for key, value in self.selector.items()
        )

    @property
    def ref(self) -> str:
        """How VirtualService `gateways` name it: `namespace/name`."""
        return f"{self.meta.namespace}/{self.meta.name}"


def parse_gateway(p: Problems, meta: Meta, spec: Mapping[str, Any]) -> Gateway:
    obj = read_object(p, spec, "spec", _GW_FIELDS)
    selector = get_str_map(p, obj, "selector", "spec")
    if "selector" not in obj or not selector:
        p.add("spec.selector", f"{MISSING} (the labels of the gateway workloads it programs)")
    servers = [
        _parse_server(p, meta, raw, index("spec.servers", i))
        for i, raw in enumerate(get_list(p, obj, "servers", "spec", required=True, non_empty=True))
    ]
    check_ports_agree(p, servers, "spec.servers", "port.protocol")
    return Gateway(meta=meta, selector=selector, servers=tuple(s for s in servers if s))


def _parse_server(p: Problems, meta: Meta, raw: object, where: str) -> GatewayServer | None:
    obj = read_object(p, raw, where, _SERVER_FIELDS, _SERVER_UNSUPPORTED)
    port = get_object(p, obj, "port", where, _PORT_FIELDS, required=True) or {}
    port_where = join(where, "port")
    number = get_int(p, port, "number", port_where, required=True, low=1, high=65535) or 0
    protocol = (get_str(p, port, "protocol", port_where, required=True) or "").upper()
    if protocol:
        supported = (*PLAIN_PROTOCOLS, *TLS_PROTOCOLS, *PASSTHROUGH_PROTOCOLS, *TCP_PROTOCOLS)
        checked = check_enum(p, protocol, join(port_where, "protocol"), supported, _LATER_PROTOCOLS)
        protocol = checked or ""
    if "targetPort" in port:
        p.add(join(port_where, "targetPort"), f"{NOT_SUPPORTED} (the gateway binds port.number)")
    hosts = tuple(
        _parse_host(p, meta, item, index(join(where, "hosts"), i))
        for i, item in enumerate(get_list(p, obj, "hosts", where, required=True, non_empty=True))
    )
    tls = _parse_tls(p, obj, where, protocol)
    name = get_str(p, obj, "name", where) or ""
    if not (number and protocol):
        return None
    port_name = get_str(p, port, "name", port_where) or f"{protocol.lower()}-{number}"
    return GatewayServer(number, protocol, port_name, hosts, tls, name)


def _parse_host(p: Problems, meta: Meta, raw: object, where: str) -> GatewayHost:
    text = check_str(p, raw, where) or ""
    namespace, _, host = text.rpartition("/")
    if namespace == "." or not namespace:
        namespace = meta.namespace
    elif namespace != "*" and not is_dns_label(namespace):
        p.add(where, f'invalid namespace "{namespace}" in "{text}" (expected "ns/host")')
    return GatewayHost(namespace, check_host_pattern(p, host, where))


def _parse_tls(p: Problems, obj: Mapping[str, Any], where: str, protocol: str) -> ServerTls:
    tls_where = join(where, "tls")
    tls = get_object(p, obj, "tls", where, _TLS_FIELDS, _TLS_UNSUPPORTED)
    redirect = bool(tls and get_bool(p, tls, "httpsRedirect", tls_where))
    mode = ""
    if tls is not None and "mode" in tls:
        mode = check_enum(p, str(tls["mode"]).upper(), join(tls_where, "mode"), TLS_MODES) or ""
    credential = (tls and get_str(p, tls, "credentialName", tls_where)) or ""
    if protocol in PASSTHROUGH_PROTOCOLS and mode not in PASSTHROUGH_MODES:
        p.add(
            join(tls_where, "mode"),
            f"a {protocol} server takes PASSTHROUGH or AUTO_PASSTHROUGH here",
        )
    elif mode in PASSTHROUGH_MODES and protocol not in PASSTHROUGH_PROTOCOLS:
        p.add(join(tls_where, "mode"), f"{mode} is for TLS servers")
    if protocol in TLS_PROTOCOLS and not mode:
        if tls is None or "mode" not in tls:
            p.add(join(tls_where, "mode"), f"{MISSING} (an {protocol} server terminates TLS)")
    elif protocol in (*PLAIN_PROTOCOLS, *TCP_PROTOCOLS) and mode:
        p.add(join(tls_where, "mode"), f"a plaintext {protocol} server has no TLS mode")
    if redirect and protocol not in PLAIN_PROTOCOLS:
        p.add(join(tls_where, "httpsRedirect"), "only a plaintext HTTP server redirects")
    if mode in CREDENTIAL_MODES and not credential:
        p.add(join(tls_where, "credentialName"), f"{MISSING} (the server certificate for {mode})")
    if mode == "ISTIO_MUTUAL" and credential:
        p.add(join(tls_where, "credentialName"), "ISTIO_MUTUAL uses the gateway's workload cert")
    return ServerTls(mode, credential, redirect)


def check_ports_agree(
    p: Problems, servers: list[GatewayServer | None], where: str, protocol: str
) -> None:
    """One listener per port: its servers are all plaintext HTTP, all TLS
    (terminated or passed through: Envoy chooses by SNI) or all TCP. Two
    plaintext servers on a port are one route table (Istio merges them; here
    their hosts simply join); a host both terminated and passed through on a
    port would be two filter chains for one SNI name (the Gateway API's
    HostnameConflict)."""
    seen: dict[int, str] = {}
    sni: dict[tuple[int, str], bool] = {}  # (port, host) -> passed through
    for i, server in enumerate(servers):
        if server is None:
            continue
        kind = "tcp" if server.tcp else "plain"
        if server.terminates_tls or server.passthrough:
            kind = "tls"
            for host in {h.host for h in server.hosts}:
                if sni.setdefault((server.number, host), server.passthrough) != server.passthrough:
                    p.add(
                        join(index(where, i), protocol),
                        f"port {server.number}: host {host} is both terminated and passed "
                        "through (one SNI name, one filter chain)",
                    )
        if seen.setdefault(server.number, kind) != kind:
            p.add(
                join(index(where, i), protocol),
                f"port {server.number} mixes plaintext HTTP, TLS and TCP servers "
                "(one listener per port)",
            )
