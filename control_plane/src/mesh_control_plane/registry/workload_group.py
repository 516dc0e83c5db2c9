"""WorkloadGroup: the template self-registering workloads are stamped from.

Istio's `networking.istio.io/v1` WorkloadGroup: `spec.metadata.labels` (labels every
member carries), `spec.template` (a WorkloadEntry without address: serviceAccount,
ports, labels, network, locality, weight) and an optional `spec.probe` (httpGet,
tcpSocket or grpc, with Kubernetes' timing fields). Parsed here, from the raw YAML
mapping, so the registry does not depend on the config loader knowing the kind; the
loader can call `parse_workload_group` when it learns it (see `load_workload_groups`).
Every problem is collected and reported with the file and field, never ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

__all__ = [
    "Probe",
    "WorkloadGroup",
    "WorkloadGroupError",
    "load_workload_groups",
    "parse_workload_group",
]

_TEMPLATE_FIELDS = ("serviceAccount", "ports", "labels", "network", "locality", "weight")
_PROBE_FIELDS = (
    "initialDelaySeconds",
    "timeoutSeconds",
    "periodSeconds",
    "successThreshold",
    "failureThreshold",
    "httpGet",
    "tcpSocket",
    "grpc",
    "exec",
)


class WorkloadGroupError(ValueError):
    """A WorkloadGroup document is invalid; `problems` lists every reason."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Probe:
    """How the control plane checks a member is ready (one of http/tcp/grpc)."""

    kind: str  # "http" | "tcp" | "grpc"
    port: int
    path: str = "/"
    grpc_service: str = ""
    timeout: float = 1.0
    period: float = 10.0
    initial_delay: float = 0.0
    failure_threshold: int = 3
    success_threshold: int = 1


@dataclass(frozen=True)
class WorkloadGroup:
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)  # spec.metadata.labels
    service_account: str = ""
    ports: Mapping[str, int] = field(default_factory=dict)
    template_labels: Mapping[str, str] = field(default_factory=dict)
    network: str = ""
    locality: str = ""
    weight: int = 1
    probe: Probe | None = None
    file: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def member_labels(self, own: Mapping[str, str]) -> dict[str, str]:
        """A member's labels: the group's, then the template's, then its own."""
        return {**self.labels, **self.template_labels, **own}


def parse_workload_group(raw: Mapping[str, Any], *, file: str = "") -> WorkloadGroup:
    """One WorkloadGroup from its YAML mapping (apiVersion/kind/metadata/spec)."""
    problems: list[str] = []
    where = file or "<WorkloadGroup>"

    def bad(path: str, message: str) -> None:
        problems.append(f"{where}: WorkloadGroup {path}: {message}")

    if raw.get("kind") != "WorkloadGroup":
        bad("kind", f"expected WorkloadGroup, got {raw.get('kind')!r}")
    api = raw.get("apiVersion", "")
    if not str(api).startswith("networking.istio.io/"):
        bad("apiVersion", f"expected networking.istio.io/v1, got {api!r}")
    meta = _mapping(raw.get("metadata"), "metadata", bad)
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        bad("metadata.name", "is missing")
        name = ""
    namespace = meta.get("namespace", "default")
    spec = _mapping(raw.get("spec"), "spec", bad)
    for key in spec:
        if key not in ("metadata", "template", "probe"):
            bad(f"spec.{key}", "unknown field")
    spec_meta = _mapping(spec.get("metadata", {}), "spec.metadata", bad)
    template = _mapping(spec.get("template", {}), "spec.template", bad)
    for key in template:
        if key == "address":
            bad("spec.template.address", "a group has no address: each workload sends its own")
        elif key not in _TEMPLATE_FIELDS:
            bad(f"spec.template.{key}", "unknown field")
    weight = template.get("weight", 1)
    if not isinstance(weight, int) or weight < 0:
        bad("spec.template.weight", f"expected a non-negative integer, got {weight!r}")
        weight = 1
    probe = _probe(spec["probe"], bad) if spec.get("probe") is not None else None
    group = WorkloadGroup(
        namespace=str(namespace),
        name=name,
        labels=_strings(spec_meta.get("labels", {}), "spec.metadata.labels", bad),
        service_account=str(template.get("serviceAccount", "")),
        ports=_ports(template.get("ports", {}), "spec.template.ports", bad),
        template_labels=_strings(template.get("labels", {}), "spec.template.labels", bad),
        network=str(template.get("network", "")),
        locality=str(template.get("locality", "")),
        weight=weight,
        probe=probe,
        file=file,
    )
    if problems:
        raise WorkloadGroupError(problems)
    return group


def load_workload_groups(directory: Path) -> tuple[WorkloadGroup, ...]:
    """Every WorkloadGroup document in the YAML files under `directory` (other kinds
    are skipped: they belong to the config loader). Raises WorkloadGroupError with
    every problem of every file."""
    groups: list[WorkloadGroup] = []
    problems: list[str] = []
    for path in sorted(Path(directory).rglob("*.y*ml")):
        if any(part.startswith(".") for part in path.relative_to(directory).parts):
            continue
        rel = path.relative_to(directory).as_posix()
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            problems.append(f"{rel}: not valid YAML: {exc}")
            continue
        for doc in docs:
            if isinstance(doc, Mapping) and doc.get("kind") == "WorkloadGroup":
                try:
                    groups.append(parse_workload_group(doc, file=rel))
                except WorkloadGroupError as exc:
                    problems.extend(exc.problems)
    if problems:
        raise WorkloadGroupError(problems)
    return tuple(sorted(groups, key=lambda g: (g.namespace, g.name)))


def _mapping(value: Any, path: str, bad: Any) -> Mapping[str, Any]:
    if value is None:
        bad(path, "is missing")
        return {}
    if not isinstance(value, Mapping):
        bad(path, f"expected a mapping, got {type(value).__name__}")
        return {}
    return value


def _strings(value: Any, path: str, bad: Any) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        bad(path, "expected a mapping of strings to strings")
        return MappingProxyType({})
    return MappingProxyType(dict(value))


def _ports(value: Any, path: str, bad: Any) -> Mapping[str, int]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) and 0 < v < 65536 for k, v in value.items()
    ):
        bad(path, "expected a mapping of port names to port numbers 1-65535")
        return MappingProxyType({})
    return MappingProxyType(dict(value))


def _number(probe: Mapping[str, Any], key: str, default: float, bad: Any) -> float:
    value = probe.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        bad(f"spec.probe.{key}", f"expected a non-negative number, got {value!r}")
        return default
    return float(value)


def _probe(raw: Any, bad: Any) -> Probe | None:
    probe = _mapping(raw, "spec.probe", bad)
    for key in probe:
        if key not in _PROBE_FIELDS:
            bad(f"spec.probe.{key}", "unknown field")
    if "exec" in probe:
        bad("spec.probe.exec", "not supported: the control plane cannot run commands on a workload")
    kinds = [k for k in ("httpGet", "tcpSocket", "grpc") if k in probe]
    if len(kinds) != 1:
        bad("spec.probe", "exactly one of httpGet, tcpSocket, grpc is required")
        return None
    action = _mapping(probe[kinds[0]], f"spec.probe.{kinds[0]}", bad)
    port = action.get("port")
    if not isinstance(port, int) or not 0 < port < 65536:
        bad(f"spec.probe.{kinds[0]}.port", f"expected a port number, got {port!r}")
        port = 0
    timing = {
        "timeout": _number(probe, "timeoutSeconds", 1.0, bad),
        "period": _number(probe, "periodSeconds", 10.0, bad),
        "initial_delay": _number(probe, "initialDelaySeconds", 0.0, bad),
        "failure_threshold": int(_number(probe, "failureThreshold", 3, bad)) or 1,
        "success_threshold": int(_number(probe, "successThreshold", 1, bad)) or 1,
    }
    if kinds[0] == "httpGet":
        return Probe("http", port, path=str(action.get("path", "/")), **timing)  # type: ignore[arg-type]
    if kinds[0] == "grpc":
        return Probe("grpc", port, grpc_service=str(action.get("service", "")), **timing)  # type: ignore[arg-type]
    return Probe("tcp", port, **timing)  # type: ignore[arg-type]
