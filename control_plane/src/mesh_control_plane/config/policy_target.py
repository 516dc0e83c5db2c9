"""Which workloads a security policy applies to (Istio's `selector`, root
namespace, and `targetRef`/`targetRefs` naming a Service), and the shape checks
the policy translators share."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from proxyless_mesh.policy import PolicyConfigError, UnsupportedPolicyError


def selects_workload(
    resource: Mapping[str, Any],
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str = "istio-system",
    services: Collection[str] = (),
) -> bool:
    """Istio's applicability: same namespace (or the root namespace, mesh-wide)
    and every `selector.matchLabels` entry present on the workload; with
    `targetRef(s)`, the workload is an instance of a named Service of the
    policy's namespace (`services`: the hosts it is an instance of)."""
    meta = resource.get("metadata") or {}
    ns = meta.get("namespace", "default")
    spec = resource.get("spec") or {}
    refs = [spec["targetRef"]] if spec.get("targetRef") else list(spec.get("targetRefs") or ())
    if refs:
        return ns == namespace and any(
            host.startswith(f"{ref.get('name')}.{ns}.svc.") for ref in refs for host in services
        )
    if ns not in (namespace, root_namespace):
        return False
    selector = spec.get("selector") or {}
    wanted = selector.get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


_SERVICE_GROUPS = ("", "core")


def target_services(spec: Mapping[str, Any], namespace: str, where: str) -> tuple[str, ...]:
    """The Services `targetRef`/`targetRefs` name (Istio's policy attachment),
    checked: only `kind: Service` (group "" or "core") of the policy's own
    namespace, and not with a `selector`. Gateways are refused: the gateway
    translation enforces no AuthorizationPolicy."""
    if "targetRef" in spec and "targetRefs" in spec:
        raise PolicyConfigError(f"{where}.targetRef", "cannot be set together with targetRefs")
    key = "targetRef" if "targetRef" in spec else "targetRefs"
    refs = [spec[key]] if key == "targetRef" else list(as_sequence(spec.get(key) or [], where))
    if refs and spec.get("selector"):
        raise PolicyConfigError(f"{where}.{key}", "cannot be set together with selector")
    names = []
    for i, raw in enumerate(refs):
        ref_where = f"{where}.{key}" + ("" if key == "targetRef" else f"[{i}]")
        ref = as_mapping(raw, ref_where)
        check_keys(ref, {"group", "kind", "name", "namespace"}, ref_where)
        kind, group = str(ref.get("kind", "")), str(ref.get("group", ""))
        if kind != "Service" or group not in _SERVICE_GROUPS:
            raise UnsupportedPolicyError(
                f"{ref_where}.kind",
                f"{group + '/' if group else ''}{kind or '(none)'} is not supported: only a "
                'Service (group "") selects workloads here; gateways enforce no '
                "AuthorizationPolicy",
            )
        if not ref.get("name"):
            raise PolicyConfigError(f"{ref_where}.name", "is required")
        if ref.get("namespace") not in (None, "", namespace):
            raise PolicyConfigError(
                f"{ref_where}.namespace", "must be the policy's own namespace (as in Istio)"
            )
        names.append(str(ref["name"]))
    return tuple(names)


def check_keys(block: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in block:
        if key not in allowed:
            raise UnsupportedPolicyError(f"{where}.{key}", "is not a supported field")


def as_mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyConfigError(where, f"expected a mapping, got {type(value).__name__}")
    return value


def as_sequence(value: Any, where: str) -> Sequence[Any]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise PolicyConfigError(where, f"expected a list, got {type(value).__name__}")
    return value
