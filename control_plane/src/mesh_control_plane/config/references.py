"""Checks across resources: every host, subset and port a resource names exists.

Run on a configuration whose resources each parsed cleanly; a problem is
reported on the resource and field that refers, since that is what the
operator has to edit (or whose target they have to add).

Hosts are global: two resources of one kind may not claim the same host,
even in different namespaces. Istio merges such resources only for gateways,
and silently picking one would route traffic by file order. Two mesh
VirtualServices of one host are accepted when their `exportTo` share no
namespace (Istio's documented fix for IST0109): each namespace sees its own.

Mirrors (`mirror`, `mirrors[]`) are destinations too and are checked alike.

Destination ports. The translator builds one route table per port of the
VirtualService's hosts (one listener per host and port). A destination that
names `port.number` must name a port of its ServiceEntry. A destination
without a port is sent, on listener port P, to its own port P if it has one,
else to its only port. So an omitted port is an error exactly when the
destination has several ports and lacks one of the ports of the
VirtualService's hosts: there the target port would be a guess.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import ConfigProblem
from .model import (
    Destination,
    DestinationRule,
    MeshConfig,
    Meta,
    PeerAuthentication,
    ServiceEntry,
    VirtualService,
)
from .parse_sidecar import Sidecar
from .schema import NOT_SUPPORTED
from .visibility import shared_namespace

__all__ = ["check_references", "reference_warnings"]


def check_references(config: MeshConfig) -> list[ConfigProblem]:
    """Every dangling or conflicting reference in `config`, in resource order."""
    problems: list[ConfigProblem] = []
    services = _index_services(config, problems)
    passthrough = {host: se for se in config.passthrough_entries for host in se.hosts}
    rules = _index_rules(config, services, passthrough, problems)
    routed: dict[str, list[VirtualService]] = {}
    for vs in config.virtual_services:
        # Hosts of a VirtualService bound only to gateways are names clients
        # send to the gateway, not services, and gateways may share them.
        for i, host in enumerate(vs.hosts if vs.for_mesh else ()):
            where = f"spec.hosts[{i}]"
            if host not in services:
                problems.append(
                    _problem(vs.meta, where, _no_service(host, passthrough), _NOT_FOUND)
                )
            # Istio merges VirtualServices of one host only for gateways: for
            # mesh clients two may share a host only if no namespace sees both.
            for other in routed.get(host, ()):
                seen_by = shared_namespace(other.meta, other.export_to, vs.meta, vs.export_to)
                if seen_by is not None:
                    claim = (
                        f'host "{host}" is already routed by {_where(other.meta)} for {seen_by} '
                        "(VirtualServices of one host are merged only for gateways: "
                        "give them exportTo that no namespace shares)"
                    )
                    problems.append(_problem(vs.meta, where, claim, _CONFLICTING_MESH_HOSTS))
                    break
            routed.setdefault(host, []).append(vs)
        listener_ports = sorted(
            {port.number for host in vs.hosts if host in services for port in services[host].ports}
        )
        for i, route in enumerate(vs.http):
            for j, weighted in enumerate(route.route):
                where = f"spec.http[{i}].route[{j}].destination"
                problems.extend(
                    _check_destination(
                        vs.meta,
                        where,
                        weighted.destination,
                        (services, passthrough),
                        rules,
                        listener_ports,
                    )
                )
            for j, mirror in enumerate(route.mirrors):
                where = f"spec.http[{i}]." + (
                    f"mirrors[{j}].destination" if mirror.in_list else "mirror"
                )
                problems.extend(
                    _check_destination(
                        vs.meta,
                        where,
                        mirror.destination,
                        (services, passthrough),
                        rules,
                        listener_ports,
                    )
                )
    for vs in config.virtual_services:
        byte_routes = [("tls", i, rule.route) for i, rule in enumerate(vs.tls)]
        byte_routes += [("tcp", i, rule.route) for i, rule in enumerate(vs.tcp)]
        for kind, i, destinations in byte_routes:
            for j, weighted in enumerate(destinations):
                where = f"spec.{kind}[{i}].route[{j}].destination"
                dest = weighted.destination
                known = (services, passthrough)
                problems.extend(_check_destination(vs.meta, where, dest, known, rules, []))
    problems.extend(_check_peer_authentications(config))
    problems.extend(_check_sidecars(config))
    return problems


def _check_peer_authentications(config: MeshConfig) -> list[ConfigProblem]:
    """At most one namespace-wide (selector-less) PeerAuthentication per
    namespace: Istio would pick the oldest, which a directory cannot tell."""
    return _one_default_per_namespace(
        config.peer_authentications,
        "a namespace-wide PeerAuthentication",
        "give this one a selector or merge them",
        "spec",
    )


def _check_sidecars(config: MeshConfig) -> list[ConfigProblem]:
    """At most one Sidecar without a workloadSelector per namespace: Istio's
    behaviour is undefined then (its analyzer's IST0111)."""
    return _one_default_per_namespace(
        config.sidecars,
        "a Sidecar without a workloadSelector",
        "Istio's choice between them is undefined",
        "spec.workloadSelector",
        _MULTIPLE_SIDECAR_DEFAULTS,
    )


def _one_default_per_namespace(
    resources: Iterable[PeerAuthentication | Sidecar],
    what: str,
    fix: str,
    field: str,
    code: str = "",
) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    wide: dict[str, Meta] = {}
    for resource in resources:
        if resource.selector is not None:
            continue
        meta = resource.meta
        first = wide.setdefault(meta.namespace, meta)
        if first is not meta:
            message = f"namespace {meta.namespace!r} already has {what}, {_where(first)}; {fix}"
            problems.append(_problem(meta, field, message, code))
    return problems


def _index_services(config: MeshConfig, problems: list[ConfigProblem]) -> dict[str, ServiceEntry]:
    services: dict[str, ServiceEntry] = {}
    for se in config.service_entries:
        for i, host in enumerate(se.hosts):
            if host in services:
                claim = f'host "{host}" is already declared by {_where(services[host].meta)}'
                problems.append(_problem(se.meta, f"spec.hosts[{i}]", claim))
            else:
                services[host] = se
    named: dict[str, ServiceEntry] = {}
    for se in config.service_entries:
        for i, address in enumerate(se.addresses):
            first = named.setdefault(address, se)
            if first is not se:
                claim = f"address {address} already names {first.hosts[0]}, {_where(first.meta)}"
                problems.append(_problem(se.meta, f"spec.addresses[{i}]", claim))
    return services


def _index_rules(
    config: MeshConfig,
    services: dict[str, ServiceEntry],
    passthrough: dict[str, ServiceEntry],
    problems: list[ConfigProblem],
) -> dict[str, DestinationRule]:
    rules: dict[str, DestinationRule] = {}
    for dr in config.destination_rules:
        if dr.host not in services:
            message = _no_service(dr.host, passthrough)
            problems.append(_problem(dr.meta, "spec.host", message, _NOT_FOUND))
        if dr.host in rules:
            claim = f'host "{dr.host}" already has {_where(rules[dr.host].meta)}'
            problems.append(_problem(dr.meta, "spec.host", claim))
        else:
            rules[dr.host] = dr
    return rules


def _check_destination(
    meta: Meta,
    where: str,
    dest: Destination,
    known: tuple[dict[str, ServiceEntry], dict[str, ServiceEntry]],
    rules: dict[str, DestinationRule],
    listener_ports: list[int],
) -> list[ConfigProblem]:
    services, passthrough = known
    service = services.get(dest.host)
    if service is None:
        return [_problem(meta, f"{where}.host", _no_service(dest.host, passthrough), _NOT_FOUND)]
    problems: list[ConfigProblem] = []
    numbers = [port.number for port in service.ports]
    listed = ", ".join(map(str, numbers))
    if dest.port is not None and dest.port not in numbers:
        message = f"{service.meta.ref} has no port {dest.port} (ports: {listed})"
        problems.append(_problem(meta, f"{where}.port.number", message, _NOT_FOUND))
    elif dest.port is None and len(numbers) > 1:
        unmatched = [port for port in listener_ports if port not in numbers]
        if unmatched:
            message = (
                f'required: host "{dest.host}" has several ports ({listed}) '
                f"and none is {_or(unmatched)}, a port of this VirtualService's hosts"
            )
            problems.append(_problem(meta, f"{where}.port", message, _PORT_SELECTOR_REQUIRED))
    return problems


def reference_warnings(config: MeshConfig) -> list[ConfigProblem]:
    """References Istio accepts although they do not resolve yet: a subset no
    DestinationRule defines. GitOps tools apply resources in any order, so the
    VirtualService is taken and requests to the subset fail as Istio's do
    (503, flag NC: its cluster does not exist) until the subset is defined.
    Also what a client kind does not do with what it is given (addresses)."""
    subsets = {(dr.host, s.name) for dr in config.destination_rules for s in dr.subsets}
    warnings: list[ConfigProblem] = []
    gateways = {gateway.ref for gateway in config.gateways}
    # A Gateway API Gateway's listeners all name the route kinds they serve.
    gateway_api = {
        g.ref for g in config.gateways if all(s.route_kinds is not None for s in g.servers)
    }
    for vs in config.virtual_services:
        for i, name in enumerate(vs.gateways):
            if name != "mesh" and name not in gateways:
                message = f'no Gateway "{name}" (yet): nothing is routed by it until one is'
                warnings.append(_problem(vs.meta, f"spec.gateways[{i}]", message, _NOT_FOUND))
            elif vs.meta.kind == "VirtualService" and name in gateway_api:
                message = (
                    f"{name} is a Gateway API Gateway: it serves the routes its listeners "
                    "admit (allowedRoutes), not VirtualServices"
                )
                warnings.append(_problem(vs.meta, f"spec.gateways[{i}]", message, _NOT_FOUND))
        for i, route in enumerate(vs.http):
            targets = [
                (f"route[{j}].destination", d.destination) for j, d in enumerate(route.route)
            ]
            targets += [
                (f"mirrors[{j}].destination" if m.in_list else "mirror", m.destination)
                for j, m in enumerate(route.mirrors)
            ]
            for where, dest in targets:
                if dest.subset is not None and (dest.host, dest.subset) not in subsets:
                    message = (
                        f'no DestinationRule for host "{dest.host}" defines subset '
                        f'"{dest.subset}" (yet): requests to it fail with 503 (NC) until one does'
                    )
                    field = f"spec.http[{i}].{where}.subset"
                    warnings.append(_problem(vs.meta, field, message, _NOT_FOUND))
    for se in config.service_entries:
        if se.addresses:
            message = (
                "Envoy and grpcio route these addresses as the host; the library never "
                "looks an IP up in the mesh (a request to one goes to that IP, or is "
                f"refused under REGISTRY_ONLY): library clients must call {se.hosts[0]}"
            )
            warnings.append(_problem(se.meta, "spec.addresses", message))
    return warnings


def _or(numbers: list[int]) -> str:
    return " or ".join(map(str, numbers))


def _no_service(host: str, passthrough: dict[str, ServiceEntry]) -> str:
    entry = passthrough.get(host)
    if entry is not None:
        given = entry.resolution + (" (the default)" if entry.resolution == "NONE" else "")
        return (
            f'host "{host}" is declared by {_where(entry.meta)} with resolution {given}: '
            "requests pass through to the host itself, so routing and traffic policy for it "
            f"are {NOT_SUPPORTED} in-process; use resolution: STATIC with endpoints"
        )
    return f'no ServiceEntry declares host "{host}"'


def _where(meta: Meta) -> str:
    return f"{meta.ref} ({meta.file})"


# Istio's analyzer codes (istioctl analyze) for the problems found here.
_NOT_FOUND = "IST0101"  # ReferencedResourceNotFound
_PORT_SELECTOR_REQUIRED = "IST0112"  # VirtualServiceDestinationPortSelectorRequired
_CONFLICTING_MESH_HOSTS = "IST0109"  # ConflictingMeshGatewayVirtualServiceHosts
_MULTIPLE_SIDECAR_DEFAULTS = "IST0111"  # MultipleSidecarsWithoutWorkloadSelectors


def _problem(meta: Meta, field: str, message: str, code: str = "") -> ConfigProblem:
    return ConfigProblem(meta.file, meta.ref, field, message, code=code)
