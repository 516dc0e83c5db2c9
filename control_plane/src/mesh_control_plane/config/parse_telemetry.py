"""telemetry.istio.io Telemetry: access logging, tracing and metrics
settings for the workloads it selects.

The spec is checked by the library's own reader (`proxyless_mesh.telemetry.
check_spec`), the one that applies it in the workload, so what the control
plane accepts is exactly what a workload honours; a refusal names the field.
`selector` (matchLabels) scopes it to workloads; without one it applies to
its namespace, or to the whole mesh in the root namespace (Istio's rules).
Gateway attachment (`targetRef`/`targetRefs`) is refused: there are no
gateways here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxyless_mesh.telemetry import TelemetrySpecError, check_spec

from .model import Meta
from .schema import Problems, get_object, get_str_map, read_object

API_VERSIONS = ("telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1")
_FIELDS = ("selector", "accessLogging", "tracing", "metrics")


@dataclass(frozen=True)
class Telemetry:
    """A checked Telemetry: its selector and its spec (the other fields)."""

    meta: Meta
    selector: Mapping[str, str] | None = None
    spec: Mapping[str, Any] = field(default_factory=dict)


def parse_telemetry(p: Problems, meta: Meta, spec: Mapping[str, Any]) -> Telemetry:
    checked = read_object(p, spec, "spec", _FIELDS, ("targetRef", "targetRefs"))
    selector_obj = get_object(p, checked, "selector", "spec", ("matchLabels",))
    selector = None
    if selector_obj is not None:
        selector = get_str_map(p, selector_obj, "matchLabels", "spec.selector")
    body = {key: value for key, value in checked.items() if key != "selector"}
    try:
        check_spec(body)
    except TelemetrySpecError as exc:
        p.add(f"spec.{exc.field}", exc.message)
    return Telemetry(meta, selector, body)
