"""`exportTo` on ServiceEntry, VirtualService and DestinationRule: which
namespaces' workloads see a resource, as Istio decides it.

Values are "*" (every namespace, Istio's default when the field is absent),
"." (the resource's own namespace), "~" (none) or namespace names. The
translator hands each client only what its namespace may see
(`visible_to`), so a client never routes by a rule, or to a service, that is
not exported to it: a hidden service is not a mesh service for that client.
The `Sidecar` resource, which narrows this further per workload, is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .model import MeshConfig, Meta
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


def visible_to(config: MeshConfig, namespace: str) -> MeshConfig:
    """`config` as a client in `namespace` sees it (the same object when no
    resource restricts its export)."""
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
