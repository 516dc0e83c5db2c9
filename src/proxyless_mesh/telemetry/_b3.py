"""Zipkin B3 propagation, for meshes whose other services speak it.

Written here (not the opentelemetry-propagator-b3 package) because the
library depends only on the OpenTelemetry API. Injects the multi-header form
(`x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`), which Envoy and Istio's
Zipkin setups read; extracts both the multi-header and the single `b3` form.
"""

from __future__ import annotations

import re
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

_HEX = re.compile(r"^[0-9a-f]{16}$|^[0-9a-f]{32}$")
_SPAN = re.compile(r"^[0-9a-f]{16}$")
FIELDS = frozenset({"b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"})


def _first(getter: Getter[Any], carrier: Any, name: str) -> str | None:
    values = getter.get(carrier, name)
    return values[0] if values else None


class B3Propagator(TextMapPropagator):
    """B3 multi-header inject; multi or single-header extract."""

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        ctx = context if context is not None else Context()
        single = _first(getter, carrier, "b3")
        if single:
            parts = single.split("-")
            if len(parts) < 2:
                return ctx
            trace_id, span_id = parts[0], parts[1]
            sampled = parts[2] if len(parts) > 2 else "1"
        else:
            trace_id = _first(getter, carrier, "x-b3-traceid") or ""
            span_id = _first(getter, carrier, "x-b3-spanid") or ""
            sampled = _first(getter, carrier, "x-b3-sampled") or ""
            if _first(getter, carrier, "x-b3-flags") == "1":
                sampled = "1"
        trace_id, span_id = trace_id.lower(), span_id.lower()
        if not _HEX.match(trace_id) or not _SPAN.match(span_id):
            return ctx
        flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled in ("1", "d", "true") else 0)
        span_context = trace.SpanContext(
            int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=flags
        )
        if not span_context.is_valid:
            return ctx
        return trace.set_span_in_context(trace.NonRecordingSpan(span_context), ctx)

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if not span_context.is_valid:
            return
        setter.set(carrier, "x-b3-traceid", f"{span_context.trace_id:032x}")
        setter.set(carrier, "x-b3-spanid", f"{span_context.span_id:016x}")
        setter.set(carrier, "x-b3-sampled", "1" if span_context.trace_flags.sampled else "0")

    @property
    def fields(self) -> set[str]:
        return set(FIELDS)
