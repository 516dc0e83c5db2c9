"""WorkloadGroup spec -> model object, for the config loader and the registry alike.

Istio's `networking.istio.io/v1` WorkloadGroup: `spec.metadata` (labels and
annotations every member carries), `spec.template` (a WorkloadEntry without
address: serviceAccount, ports, labels, network, locality, weight) and an optional
`spec.probe` (httpGet, tcpSocket or grpc, with Kubernetes' timing fields).

One spec parser serves two callers that report differently: the config loader
(file, resource and field, like every other kind) and `--workload-groups-dir`
(registry/workload_group.py, flat strings). Both hand in a `Report(field,
message)`, so the checks cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from .model import Meta
from .probe import Probe
from .schema import Problems
from .workload_group import WorkloadGroup

__all__ = ["Report", "parse_group_spec", "parse_workload_group_resource"]

Report = Callable[[str, str], None]
"""(field path such as "spec.template.weight", message): one problem."""

_SPEC_FIELDS = ("metadata", "template", "probe")
_SPEC_META_FIELDS = ("labels", "annotations")
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
_ACTIONS = ("httpGet", "tcpSocket", "grpc")


def parse_workload_group_resource(
    p: Problems, meta: Meta, spec: Mapping[str, Any]
) -> WorkloadGroup:
    """The config loader's parser (documents.PARSERS): `p` is its `Problems`, which
    names the file and resource; the envelope is already checked there."""
    return parse_group_spec(p.add, spec, namespace=meta.namespace, name=meta.name, file=meta.file)


def parse_group_spec(
    bad: Report, spec: object, *, namespace: str, name: str, file: str
) -> WorkloadGroup:
    """The group `spec` describes; every problem goes to `bad`, none is raised,
    so a caller learns all of them at once."""
    body = _mapping(spec, "spec", bad)
    _unknown(body, "spec", _SPEC_FIELDS, bad)
    spec_meta = _mapping(body.get("metadata", {}), "spec.metadata", bad)
    _unknown(spec_meta, "spec.metadata", _SPEC_META_FIELDS, bad)
    if spec_meta.get("annotations") is not None:
        _strings(spec_meta["annotations"], "spec.metadata.annotations", bad)
    template = _mapping(body.get("template", {}), "spec.template", bad)
    for key in template:
        if key == "address":
            bad("spec.template.address", "a group has no address: each workload sends its own")
        elif key not in _TEMPLATE_FIELDS:
            bad(f"spec.template.{key}", "unknown field")
    weight = template.get("weight", 1)
    if not _is_int(weight) or weight < 0:
        bad("spec.template.weight", f"expected a non-negative integer, got {weight!r}")
        weight = 1
    probe = _probe(body["probe"], bad) if body.get("probe") is not None else None
    return WorkloadGroup(
        namespace=namespace,
        name=name,
        labels=_strings(spec_meta.get("labels", {}), "spec.metadata.labels", bad),
        service_account=_text(template, "serviceAccount", bad),
        ports=_ports(template.get("ports", {}), "spec.template.ports", bad),
        template_labels=_strings(template.get("labels", {}), "spec.template.labels", bad),
        network=_text(template, "network", bad),
        locality=_text(template, "locality", bad),
        weight=weight,
        probe=probe,
        file=file,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unknown(obj: Mapping[str, Any], path: str, known: tuple[str, ...], bad: Report) -> None:
    for key in obj:
        if key not in known:
            bad(f"{path}.{key}", "unknown field")


def _mapping(value: object, path: str, bad: Report) -> Mapping[str, Any]:
    if value is None:
        bad(path, "is missing")
        return {}
    if not isinstance(value, Mapping):
        bad(path, f"expected a mapping, got {type(value).__name__}")
        return {}
    return value


def _text(template: Mapping[str, Any], key: str, bad: Report) -> str:
    value = template.get(key, "")
    if not isinstance(value, str):
        bad(f"spec.template.{key}", f"expected a string, got {type(value).__name__}")
        return ""
    return value


def _strings(value: object, path: str, bad: Report) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        bad(path, "expected a mapping of strings to strings")
        return MappingProxyType({})
    return MappingProxyType(dict(value))


def _ports(value: object, path: str, bad: Report) -> Mapping[str, int]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and _is_int(v) and 0 < v < 65536 for k, v in value.items()
    ):
        bad(path, "expected a mapping of port names to port numbers 1-65535")
        return MappingProxyType({})
    return MappingProxyType(dict(value))


def _number(probe: Mapping[str, Any], key: str, default: float, bad: Report) -> float:
    value = probe.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        bad(f"spec.probe.{key}", f"expected a non-negative number, got {value!r}")
        return default
    return float(value)


def _probe(raw: object, bad: Report) -> Probe | None:
    probe = _mapping(raw, "spec.probe", bad)
    _unknown(probe, "spec.probe", _PROBE_FIELDS, bad)
    if "exec" in probe:
        bad("spec.probe.exec", "not supported: the control plane cannot run commands on a workload")
    kinds = [k for k in _ACTIONS if k in probe]
    if len(kinds) != 1:
        bad("spec.probe", "exactly one of httpGet, tcpSocket, grpc is required")
        return None
    action = _mapping(probe[kinds[0]], f"spec.probe.{kinds[0]}", bad)
    raw_port = action.get("port")
    port = raw_port if isinstance(raw_port, int) and _is_int(raw_port) else 0
    if not 0 < port < 65536:
        bad(f"spec.probe.{kinds[0]}.port", f"expected a port number, got {raw_port!r}")
        port = 0
    timeout = _number(probe, "timeoutSeconds", 1.0, bad)
    period = _number(probe, "periodSeconds", 10.0, bad)
    initial_delay = _number(probe, "initialDelaySeconds", 0.0, bad)
    failures = int(_number(probe, "failureThreshold", 3, bad)) or 1
    successes = int(_number(probe, "successThreshold", 1, bad)) or 1
    kind, path, service = "tcp", "/", ""
    if kinds[0] == "httpGet":
        kind, path = "http", str(action.get("path", "/"))
    elif kinds[0] == "grpc":
        kind, service = "grpc", str(action.get("service", ""))
    return Probe(
        kind,
        port,
        path=path,
        grpc_service=service,
        timeout=timeout,
        period=period,
        initial_delay=initial_delay,
        failure_threshold=failures,
        success_threshold=successes,
    )
