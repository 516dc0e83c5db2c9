"""`exportTo` on ServiceEntry, VirtualService and DestinationRule: which
namespaces' workloads see a resource, as Istio decides it.

Values are "*" (every namespace, Istio's default when the field is absent),
"." (the resource's own namespace), "~" (none) or namespace names. The
translator hands each client only what its namespace may see
(`visible_to`), so a client never routes by a rule, or to a service, that is
not exported to it: a hidden service is not a mesh service for that client.
A `Sidecar` (parse_sidecar.py) narrows this further per workload, as Istio's
SidecarScope does: of what is exported to the namespace, the services whose
host (in the namespace declaring it) its egress imports, the mesh
VirtualServices whose host it imports (in the VirtualService's namespace),
and the services those route to. DestinationRules follow the services.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .model import MeshConfig, Meta, ServiceEntry
from .parse_sidecar import Sidecar, sidecar_for
from .schema import Problems, check_str, get_list, index, is_dns_label, join

EVERYWHERE = "*"
OWN_NAMESPACE = "."
NOWHERE = "~"


def parse_export_to(p: Problems, spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The `exportTo` list as Istio validates it (empty: the default, everywhere)."""
    values: list[str] = []
    for i, raw in enumerate(get_list(p, spec, "exportTo", "spec")):
        where = index("spec.exportTo", i)
        text = check_str(p, raw, where)
        if text is None:
            continue
        if text not in (EVERYWHERE, OWN_NAMESPACE, NOWHERE) and not is_dns_label(text):
            p.schema(where, f'"{text}" is not ".", "*", "~" or a namespace name')
        values.append(text)
    for special in (NOWHERE, EVERYWHERE):
        if special in values and len(values) > 1:
            p.schema(join("spec", "exportTo"), f'"{special}" cannot be combined with other values')
    return tuple(values)


def exported(meta: Meta, export_to: tuple[str, ...], namespace: str) -> bool:
    """Whether a client in `namespace` sees a resource with this `exportTo`."""
    if not export_to or EVERYWHERE in export_to:
        return True
    if OWN_NAMESPACE in export_to and meta.namespace == namespace:
        return True
    return namespace in export_to


def shared_namespace(
    a: Meta, a_export: tuple[str, ...], b: Meta, b_export: tuple[str, ...]
) -> str | None:
    """A namespace that sees both resources ("every namespace" when both are
    everyone's), or None when none does."""
    a_set, b_set = _audience(a, a_export), _audience(b, b_export)
    if a_set is None and b_set is None:
        return "every namespace"
    if a_set is None or b_set is None:
        finite = a_set if b_set is None else b_set
        first = min(finite) if finite else None
    else:
        common = a_set & b_set
        first = min(common) if common else None
    return None if first is None else f"namespace {first!r}"


def _audience(meta: Meta, export_to: tuple[str, ...]) -> frozenset[str] | None:
    """The namespaces that see a resource; None: every namespace."""
    if not export_to or EVERYWHERE in export_to:
        return None
    return frozenset(
        meta.namespace if value == OWN_NAMESPACE else value
        for value in export_to
        if value != NOWHERE
    )


def visible_to(
    config: MeshConfig, namespace: str, labels: Mapping[str, str] | None = None
) -> MeshConfig:
    """`config` as a client in `namespace` with `labels` sees it (the same
    object when nothing restricts it). `labels` None: a gateway, which no
    Sidecar scopes."""
    config = _exported_to(config, namespace)
    if labels is None or not config.sidecars:
        return config
    root = config.settings.root_namespace
    sidecar = sidecar_for(config.sidecars, namespace, labels, root)
    return config if sidecar is None else scoped_by(config, sidecar, namespace)


def scoped_by(config: MeshConfig, sidecar: Sidecar, namespace: str) -> MeshConfig:
    """What a workload of `namespace` under `sidecar` sees of the (already
    exported) `config`."""
    routes = tuple(
        vs
        for vs in config.virtual_services
        if not vs.for_mesh
        or any(sidecar.imports(h, vs.meta.namespace, namespace) for h in vs.hosts)
    )
    routed_to = {
        d.host
        for vs in routes
        if vs.for_mesh
        for route in vs.http
        for d in [*(rd.destination for rd in route.route), *(m.destination for m in route.mirrors)]
    }

    def keep(entry: ServiceEntry) -> ServiceEntry | None:
        hosts = tuple(
            h
            for h in entry.hosts
            if h in routed_to or sidecar.imports(h, entry.meta.namespace, namespace)
        )
        if hosts == entry.hosts:
            return entry
        return replace(entry, hosts=hosts) if hosts else None

    def kept(entries: tuple[ServiceEntry, ...]) -> tuple[ServiceEntry, ...]:
        return tuple(e for e in map(keep, entries) if e is not None)

    return replace(
        config,
        service_entries=kept(config.service_entries),
        passthrough_entries=kept(config.passthrough_entries),
        virtual_services=routes,
    )


def _exported_to(config: MeshConfig, namespace: str) -> MeshConfig:
    restricted = (
        any(r.export_to for r in config.service_entries)
        or any(r.export_to for r in config.passthrough_entries)
        or any(r.export_to for r in config.virtual_services)
        or any(r.export_to for r in config.destination_rules)
    )
    if not restricted:
        return config
    return replace(
        config,
        service_entries=tuple(
            r for r in config.service_entries if exported(r.meta, r.export_to, namespace)
        ),
        passthrough_entries=tuple(
            r for r in config.passthrough_entries if exported(r.meta, r.export_to, namespace)
        ),
        virtual_services=tuple(
            r for r in config.virtual_services if exported(r.meta, r.export_to, namespace)
        ),
        destination_rules=tuple(
            r for r in config.destination_rules if exported(r.meta, r.export_to, namespace)
        ),
    )
