"""networking.istio.io Sidecar: which services and routes a workload sees.

For a proxyless client the Sidecar's meaning is its egress scope: the control
plane translates for each client only the hosts its Sidecar imports
(visibility.py), so a hidden host is, for that client, not a mesh service at
all (its outbound policy decides: REGISTRY_ONLY refuses, ALLOW_ANY passes
through), and a change to a hidden host is never pushed to it.

Which Sidecar applies, as Istio resolves it: one in the workload's namespace
whose `workloadSelector.labels` all match the workload's labels; else the
namespace's Sidecar without a selector; else the root namespace's Sidecar
without a selector (the mesh-wide default). Two selector-less Sidecars in one
namespace are refused (Istio's IST0111: its behaviour is undefined); if two
with selectors match one workload (undefined too, IST0110) the first by name
wins and `meshctl analyze` says so.

`egress[].hosts` are "namespace/dnsName": namespace "*" (any), "." (the
workload's own: for the root namespace's default, each namespace's) or a
name; dnsName "*", a left-most wildcard ("*.example.com") or a full name
(Istio refuses short names here). A "~"
before the namespace makes the entry an exclusion, as in current Istio:
"~shop/cart.shop.svc.cluster.local" hides that host of shop even where
"shop/*" or "*/*" imports it, "~/h" (no namespace: every one) hides h
everywhere, so "~/*" imports nothing. No `egress` imports "*/*".
Refused by field: `egress[].port`/`bind`/`captureMode` (there is no listener
per port in-process: a proxyless client resolves each host itself), more
than one egress entry (only the port-less catch-all is meaningful here),
`ingress` and `inboundConnectionPool` (there is no inbound capture), and
`outboundTrafficPolicy.egressProxy`. `outboundTrafficPolicy.mode` overrides,
for library clients, their own `Mesh(outbound_policy=...)` (the "mesh
default"): see translate/outbound_policy.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigProblem
from .model import Meta
from .schema import (
    NOT_SUPPORTED,
    Problems,
    check_enum,
    check_host_pattern,
    check_str,
    get_list,
    get_object,
    get_str_map,
    index,
    is_dns_label,
    read_object,
)

_SIDECAR_FIELDS = ("workloadSelector", "egress", "outboundTrafficPolicy")
_SIDECAR_UNSUPPORTED = ("ingress", "inboundConnectionPool")
_POLICY_FIELDS = ("mode",)
_POLICY_UNSUPPORTED = ("egressProxy",)
OUTBOUND_MODES = ("REGISTRY_ONLY", "ALLOW_ANY")
_EGRESS_FIELDS = ("hosts",)
_EGRESS_UNSUPPORTED = ("port", "bind", "captureMode")
ANY_NAMESPACE = "*"
OWN_NAMESPACE = "."
EXCLUDE = "~"
IMPORT_ALL = ((ANY_NAMESPACE, "*"),)
CONFLICTING_SELECTORS = "IST0110"  # Istio's ConflictingSidecarWorkloadSelectors


@dataclass(frozen=True)
class Sidecar:
    """A checked Sidecar: its selector (None: namespace-wide), the
    (namespace, dnsName) pairs its egress imports and those it excludes."""

    meta: Meta
    selector: Mapping[str, str] | None = None
    hosts: tuple[tuple[str, str], ...] = IMPORT_ALL
    outbound_policy: str | None = None  # outboundTrafficPolicy.mode, when set
    excluded: tuple[tuple[str, str], ...] = ()

    def selects(self, labels: Mapping[str, str]) -> bool:
        return self.selector is not None and all(
            labels.get(k) == v for k, v in self.selector.items()
        )

    def imports(self, host: str, namespace: str, workload_namespace: str) -> bool:
        """Whether a host declared (or routed) in `namespace` is in scope for
        a workload of `workload_namespace` (what "." means: the root
        namespace's Sidecar applies to each namespace as its own, as istiod
        converts it per namespace): imported by an entry and excluded by none."""
        return self._any(self.hosts, host, namespace, workload_namespace) and not self._any(
            self.excluded, host, namespace, workload_namespace
        )

    @staticmethod
    def _any(entries: tuple[tuple[str, str], ...], host: str, namespace: str, own: str) -> bool:
        return any(
            _namespace_matches(ns, namespace, own) and host_matches(dns, host)
            for ns, dns in entries
        )


def parse_sidecar(p: Problems, meta: Meta, spec: Mapping[str, Any]) -> Sidecar:
    checked = read_object(p, spec, "spec", _SIDECAR_FIELDS, _SIDECAR_UNSUPPORTED)
    selector = None
    selector_obj = get_object(p, checked, "workloadSelector", "spec", ("labels",))
    if selector_obj is not None:
        selector = get_str_map(p, selector_obj, "labels", "spec.workloadSelector")
        if selector_obj.get("labels") in (None, {}):  # other types: named by get_str_map
            p.schema("spec.workloadSelector.labels", "required: at least one label")
    egress = get_list(p, checked, "egress", "spec")
    if len(egress) > 1:
        p.add(
            "spec.egress",
            "only one egress entry (the catch-all without a port) is supported: "
            f"egress listeners per port are {NOT_SUPPORTED} in-process",
        )
    entries: list[tuple[bool, str, str]] = [(False, ANY_NAMESPACE, "*")]
    for i, entry in enumerate(egress[:1]):
        where = index("spec.egress", i)
        fields = read_object(p, entry, where, _EGRESS_FIELDS, _EGRESS_UNSUPPORTED)
        entries = list(_egress_hosts(p, fields, where))
    return Sidecar(
        meta,
        selector,
        tuple((ns, dns) for excluded, ns, dns in entries if not excluded),
        _outbound_mode(p, checked),
        tuple((ns, dns) for excluded, ns, dns in entries if excluded),
    )


def _outbound_mode(p: Problems, spec: Mapping[str, Any]) -> str | None:
    where = "spec.outboundTrafficPolicy"
    policy = get_object(
        p, spec, "outboundTrafficPolicy", "spec", _POLICY_FIELDS, _POLICY_UNSUPPORTED
    )
    if policy is None:
        return None
    # An unset mode is the enum's zero, REGISTRY_ONLY, as istiod reads it (the
    # mesh's own default, ALLOW_ANY, applies only when the field is absent).
    mode = check_str(p, policy.get("mode", "REGISTRY_ONLY"), f"{where}.mode")
    return None if mode is None else check_enum(p, mode, f"{where}.mode", OUTBOUND_MODES)


def _egress_hosts(
    p: Problems, entry: Mapping[str, Any], where: str
) -> Iterable[tuple[bool, str, str]]:
    """(excluded, namespace, dnsName) per host, as Istio validates them."""
    for i, raw in enumerate(get_list(p, entry, "hosts", where, required=True, non_empty=True)):
        at = index(f"{where}.hosts", i)
        text = check_str(p, raw, at)
        if text is None:
            continue
        namespace, slash, dns = text.partition("/")
        if not slash or not dns:
            p.schema(at, f'"{text}" is not "namespace/dnsName" (e.g. "./*", "istio-system/*")')
            continue
        excluded = namespace.startswith(EXCLUDE)
        namespace = namespace.removeprefix(EXCLUDE) or (ANY_NAMESPACE if excluded else "")
        if namespace not in (ANY_NAMESPACE, OWN_NAMESPACE) and not is_dns_label(namespace):
            p.schema(
                at, f'"{namespace}" is not "*", "." or a namespace name (after an optional "~")'
            )
            continue
        if dns != "*" and "." not in dns:
            p.schema(at, f'"{dns}" is a short name: write the full host name (Istio refuses it)')
            continue
        yield excluded, namespace, check_host_pattern(p, dns, at)


def host_matches(pattern: str, host: str) -> bool:
    """Istio's host matching: "*" is every host, "*.x" every host ending in
    ".x" (a wildcard host itself when its suffix is inside the pattern's)."""
    if pattern == "*" or pattern == host:
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and (not host.startswith("*.") or len(host) >= len(pattern))
    return False


def _namespace_matches(pattern: str, namespace: str, own: str) -> bool:
    if pattern == ANY_NAMESPACE:
        return True
    if pattern == OWN_NAMESPACE:
        return namespace == own
    return pattern == namespace


def sidecar_for(
    sidecars: Iterable[Sidecar], namespace: str, labels: Mapping[str, str], root_namespace: str
) -> Sidecar | None:
    """The Sidecar that applies to a workload, in Istio's order of precedence
    (see the module docstring); None: no Sidecar, the workload sees all."""
    own = [s for s in sidecars if s.meta.namespace == namespace]
    for sidecar in own:
        if sidecar.selects(labels):
            return sidecar
    for sidecar in own:
        if sidecar.selector is None:
            return sidecar
    for sidecar in sidecars:
        if sidecar.meta.namespace == root_namespace and sidecar.selector is None:
            return sidecar
    return None


def overlapping_selectors(sidecars: Iterable[Sidecar]) -> list[ConfigProblem]:
    """Warnings for two Sidecars of a namespace whose selectors can match one
    workload (no label asked by both with different values): Istio's IST0110.
    The first by name is the one applied."""
    warnings: list[ConfigProblem] = []
    selecting = [s for s in sidecars if s.selector is not None]
    for i, later in enumerate(selecting):
        for earlier in selecting[:i]:
            if earlier.meta.namespace != later.meta.namespace:
                continue
            a, b = dict(earlier.selector or {}), dict(later.selector or {})
            if all(a[k] == b[k] for k in a.keys() & b.keys()):
                message = (
                    f"can select the same workloads as Sidecar {earlier.meta.name}; "
                    f"{earlier.meta.name} is applied (Istio's choice is undefined)"
                )
                warnings.append(
                    ConfigProblem(
                        later.meta.file,
                        later.meta.ref,
                        "spec.workloadSelector",
                        message,
                        code=CONFLICTING_SELECTORS,
                    )
                )
                break
    return warnings
