"""`meshctl analyze DIR`: validate a config directory without running anything.

Errors are what the control plane would refuse (the loader's problems, and a
translation the library would NACK); warnings are configs that load but
probably do not do what was meant: a subset that selects no endpoints, a
route to a host with no endpoints, a subset no route uses, a destination
with weight 0, a route shadowed by a catch-all above it, an
AuthorizationPolicy that selects no workload. Each finding is one line
naming file, resource and field; the exit code is 1 when there are errors.
`analyze()` and `render_findings()` are pure, checked against golden text.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh_control_plane.admin.simulate import ConfigView
from mesh_control_plane.cli.offline import load_offline
from mesh_control_plane.config import ConfigLoadError, ConfigProblem
from mesh_control_plane.config.authorization import selects_workload, target_services
from mesh_control_plane.config.model import Meta
from mesh_control_plane.translate import cluster_name
from proxyless_mesh.errors import XdsResourceError

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    severity: str  # ERROR | WARNING
    problem: ConfigProblem

    def __str__(self) -> str:
        return f"{self.severity}: {self.problem}"


def add_parser(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser(
        "analyze", help="validate a config directory: errors and warnings, nothing started"
    )
    p.add_argument("config_dir", type=Path, metavar="DIR", help="directory of Istio YAML")
    p.set_defaults(run=run)


def analyze_dir(config_dir: Path) -> list[Finding]:
    """Every finding for the directory: load errors alone when it does not load."""
    try:
        offline = load_offline(config_dir)
    except ConfigLoadError as exc:
        return [Finding(ERROR, p) for p in exc.problems]
    except XdsResourceError as exc:
        message = f"the library would reject the translated config: {exc}"
        return [Finding(ERROR, ConfigProblem("", "", "", message))]
    return analyze(offline)


def analyze(offline: ConfigView) -> list[Finding]:
    """The warnings of a config that loads, by file and resource."""
    findings = [
        *_empty_subsets(offline),
        *_unused_subsets(offline),
        *_routes(offline),
        *_idle_policies(offline),
        *_remote_keys(offline),
        *(Finding(WARNING, w) for w in getattr(offline.config, "warnings", ())),
    ]
    return sorted(findings, key=lambda f: (f.problem.file, f.problem.resource))


def render_findings(findings: Sequence[Finding]) -> str:
    errors = sum(f.severity == ERROR for f in findings)
    warnings = len(findings) - errors
    lines = [str(f) for f in findings]
    if findings:
        lines.append(f"{_count(errors, 'error')}, {_count(warnings, 'warning')}")
    else:
        lines.append("no problems found")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    findings = analyze_dir(args.config_dir)
    sys.stdout.write(render_findings(findings))
    return 1 if any(f.severity == ERROR for f in findings) else 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _warn(meta: Meta, field: str, message: str) -> Finding:
    return Finding(WARNING, ConfigProblem(meta.file, meta.ref, field, message))


def _empty_subsets(offline: ConfigView) -> list[Finding]:
    """A subset whose clusters (one per port) the translator left empty."""
    ports = {h: se.ports for se in offline.config.service_entries for h in se.hosts}
    out = []
    for dr in offline.config.destination_rules:
        for i, subset in enumerate(dr.subsets):
            names = [cluster_name(dr.host, p.number, subset.name) for p in ports.get(dr.host, ())]
            assignments = [offline.state.assignments.get(n) for n in names]
            if names and not any(a is not None and _size(a) for a in assignments):
                labels = ", ".join(f"{k}={v}" for k, v in sorted(subset.labels.items()))
                message = (
                    f'subset "{subset.name}" selects no endpoints of "{dr.host}" '
                    f"(labels {labels or 'none'})"
                )
                out.append(_warn(dr.meta, f"spec.subsets[{i}]", message))
    return out


def _size(assignment: Any) -> int:
    return sum(len(le.endpoints) for le in assignment.localities)


def _unused_subsets(offline: ConfigView) -> list[Finding]:
    routes = [route for vs in offline.config.virtual_services for route in vs.http]
    used = {(d.destination.host, d.destination.subset) for r in routes for d in r.route}
    used |= {(m.destination.host, m.destination.subset) for r in routes for m in r.mirrors}
    configs = offline.config.virtual_services
    byte_routes = [d for vs in configs for r in vs.tcp for d in r.route]
    byte_routes += [d for vs in configs for r in vs.tls for d in r.route]
    used |= {(d.destination.host, d.destination.subset) for d in byte_routes}
    out = []
    for dr in offline.config.destination_rules:
        for i, subset in enumerate(dr.subsets):
            if (dr.host, subset.name) not in used:
                message = f'subset "{subset.name}" is not used by any VirtualService route'
                out.append(_warn(dr.meta, f"spec.subsets[{i}]", message))
    return out


def _routes(offline: ConfigView) -> list[Finding]:
    """Per VirtualService route: destinations without endpoints, weight 0,
    and routes after one that matches every request."""
    out = []
    for vs in offline.config.virtual_services:
        catch_all: int | None = None
        for i, route in enumerate(vs.http):
            if catch_all is not None:
                message = f"unreachable: spec.http[{catch_all}] above matches every request"
                out.append(_warn(vs.meta, f"spec.http[{i}]", message))
            elif not route.match:
                catch_all = i
            for j, weighted in enumerate(route.route):
                where = f"spec.http[{i}].route[{j}]"
                host = weighted.destination.host
                if not offline.registry.get(host):
                    message = f'host "{host}" has no endpoints: requests will fail (UH)'
                    out.append(_warn(vs.meta, f"{where}.destination.host", message))
                if len(route.route) > 1 and weighted.weight == 0:
                    message = "weight 0: this destination receives no traffic"
                    out.append(_warn(vs.meta, f"{where}.weight", message))
    return out


def _idle_policies(offline: ConfigView) -> list[Finding]:
    """AuthorizationPolicies with a selector that matches no known workload."""
    workloads = [
        (se.meta.namespace, dict(instance.labels))
        for se in offline.config.service_entries
        for host in se.hosts
        for instance in offline.registry.get(host, ())
    ]
    out = []
    hosts = [h for se in offline.config.service_entries for h in se.hosts]
    for policy in getattr(offline.config, "authorization_policies", ()):
        resource = policy.resource()
        ns = policy.meta.namespace
        for name in target_services(resource.get("spec") or {}, ns, "spec"):
            if not any(h.startswith(f"{name}.{ns}.svc.") for h in hosts):
                message = f"targetRefs: Service {ns}/{name} is not known: this applies to nothing"
                out.append(_warn(policy.meta, "spec.targetRefs", message))
        if not (resource.get("spec") or {}).get("selector"):
            continue  # namespace- or mesh-wide: applies whether or not workloads exist yet
        if not any(selects_workload(resource, ns, labels) for ns, labels in workloads):
            message = "selector matches no workload in the mesh: this policy applies to nothing"
            out.append(_warn(policy.meta, "spec.selector", message))
    return out


def _remote_keys(offline: ConfigView) -> list[Finding]:
    """jwtRules whose keys are at a `jwksUri`: the running control plane fetches
    them, analyze does not (it opens no connection), so it cannot check them."""
    out = []
    for ra in getattr(offline.config, "request_authentications", ()):
        rules = (ra.resource().get("spec") or {}).get("jwtRules") or ()
        for i, rule in enumerate(rules):
            if isinstance(rule, dict) and rule.get("jwksUri") and not rule.get("jwks"):
                message = (
                    f"keys at {rule['jwksUri']} are fetched by the running control plane, "
                    "not offline: analyze did not check them"
                )
                out.append(_warn(ra.meta, f"spec.jwtRules[{i}].jwksUri", message))
    return out
