"""Gateway API references: ReferenceGrant, and backendRefs that do not resolve.

As the Gateway API specifies, a route's backend in another namespace is
permitted only by a ReferenceGrant in the backend's namespace (from the
route's kind and namespace, to Services, all or by name). A backend that is
not permitted (RefNotPermitted) or names no declared Service
(BackendNotFound) does not refuse the configuration: it is dropped from its
rule, the route's ResolvedRefs condition is False (a warning here, read by
`meshctl gateway status`), and a rule left with no backend answers 500 (a
TLSRoute's or TCPRoute's is dropped: its connections are refused). The
spec also wants the dropped backend's share of a split answered with 500;
here its weight goes to the rule's other backends (said in the warning).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .errors import ConfigProblem
from .model import HTTPRouteDestination, MeshConfig, Meta, VirtualService
from .parse_cors import DirectResponse
from .schema import Problems, get_list, get_str, index, read_object

GROUP = "gateway.networking.k8s.io"
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute")
_GRANT_FIELDS = ("from", "to")
CROSS_NAMESPACE_SUFFIX = ".svc"  # a backend of another namespace, until the domain is known
BACKEND_NOT_FOUND = "BackendNotFound"
REF_NOT_PERMITTED = "RefNotPermitted"


@dataclass(frozen=True)
class ReferenceGrant:
    meta: Meta
    sources: tuple[tuple[str, str, str], ...]  # (group, kind, namespace)
    targets: tuple[tuple[str, str, str], ...]  # (group, kind, name or "" for all)

    def permits(self, kind: str, namespace: str, service: str) -> bool:
        """Whether a route of `kind` in `namespace` may use Service `service`
        of this grant's namespace."""
        return (GROUP, kind, namespace) in self.sources and any(
            group == "" and target_kind == "Service" and name in ("", service)
            for group, target_kind, name in self.targets
        )


def parse_reference_grant(p: Problems, meta: Meta, spec: Mapping[str, Any]) -> ReferenceGrant:
    obj = read_object(p, spec, "spec", _GRANT_FIELDS)
    sources = _triples(p, obj, "from", "namespace", required=True)
    return ReferenceGrant(meta, sources, _triples(p, obj, "to", "name", required=False))


def _triples(
    p: Problems, obj: Mapping[str, Any], key: str, third: str, required: bool
) -> tuple[tuple[str, str, str], ...]:
    """`from[]`/`to[]`: (group, kind, namespace or name) of each entry."""
    found = []
    for i, raw in enumerate(get_list(p, obj, key, "spec", required=True, non_empty=True)):
        where = index(f"spec.{key}", i)
        item = read_object(p, raw, where, ("group", "kind", third))
        group = get_str(p, item, "group", where, required=True) or ""
        kind = get_str(p, item, "kind", where, required=True) or ""
        found.append((group, kind, get_str(p, item, third, where, required=required) or ""))
    return tuple(found)


def resolve_backend_refs(
    config: MeshConfig, grants: tuple[ReferenceGrant, ...], known_hosts: frozenset[str]
) -> tuple[MeshConfig, list[ConfigProblem]]:
    """The routes with their unresolved backends dropped (a rule left with none
    answers 500), and a warning per dropped backend (ResolvedRefs=False)."""
    domain = config.settings.domain
    problems: list[ConfigProblem] = []
    services = []
    for vs in config.virtual_services:
        if vs.meta.kind in ROUTE_KINDS:
            vs = _resolve_route(vs, grants, known_hosts, domain, problems)
        services.append(vs)
    return replace(config, virtual_services=tuple(services)), problems


def _resolve_route(
    vs: VirtualService,
    grants: tuple[ReferenceGrant, ...],
    known_hosts: frozenset[str],
    domain: str,
    problems: list[ConfigProblem],
) -> VirtualService:
    def resolved(i: int, route: tuple[HTTPRouteDestination, ...]) -> list[HTTPRouteDestination]:
        kept: list[HTTPRouteDestination] = []
        dropped: list[tuple[int, str, str]] = []
        for j, backend in enumerate(route):
            host = backend.destination.host
            if host.endswith(CROSS_NAMESPACE_SUFFIX):
                host = f"{host}.{domain}"
                backend = replace(backend, destination=replace(backend.destination, host=host))
            reason = _unresolved(vs, host, grants, known_hosts)
            if reason is None:
                kept.append(backend)
            else:
                dropped.append((j, reason, host))
        share = (
            "its weight goes to the rule's other backends (the spec says 500 for that share)"
            if kept
            else "the rule answers 500"
            if vs.http
            else "the rule's connections are refused"
        )
        for j, reason, host in dropped:
            message = f"{reason}: {_explain(reason, host)}; {share}"
            field = f"spec.rules[{i}].backendRefs[{j}]"
            problems.append(ConfigProblem(vs.meta.file, vs.meta.ref, field, message))
        return kept

    rules = []
    for i, rule in enumerate(vs.http):
        if kept := resolved(i, rule.route):
            rules.append(replace(rule, route=tuple(kept)))
        else:
            rules.append(replace(rule, route=(), direct_response=DirectResponse(500)))
    tls = [replace(r, route=tuple(k)) for i, r in enumerate(vs.tls) if (k := resolved(i, r.route))]
    tcp = [replace(r, route=tuple(k)) for i, r in enumerate(vs.tcp) if (k := resolved(i, r.route))]
    return replace(vs, http=tuple(rules), tls=tuple(tls), tcp=tuple(tcp))


def _unresolved(
    vs: VirtualService, host: str, grants: tuple[ReferenceGrant, ...], known: frozenset[str]
) -> str | None:
    name, _, rest = host.partition(".")
    namespace = rest.partition(".")[0]
    if namespace != vs.meta.namespace and not any(
        g.meta.namespace == namespace and g.permits(vs.meta.kind, vs.meta.namespace, name)
        for g in grants
    ):
        return REF_NOT_PERMITTED
    return None if host in known else BACKEND_NOT_FOUND


def _explain(reason: str, host: str) -> str:
    name, _, rest = host.partition(".")
    namespace = rest.partition(".")[0]
    if reason == REF_NOT_PERMITTED:
        return f"no ReferenceGrant in namespace {namespace} lets this route use Service {name}"
    return f"no Service {host} is declared"


def resolved_refs(warnings: tuple[ConfigProblem, ...], resource: str) -> tuple[str, str]:
    """(status, reason) of a route's ResolvedRefs condition, from the warnings."""
    for warning in warnings:
        if warning.resource == resource and ".backendRefs[" in warning.field:
            return "False", warning.message.partition(":")[0]
    return "True", "ResolvedRefs"
