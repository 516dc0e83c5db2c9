"""Istio's Telemetry API (`telemetry.istio.io/v1` Telemetry), the part a
proxyless workload can honour, checked and merged into one immutable
`TelemetryPolicy` that the request path reads.

The control plane validates each resource with `check_spec` (so a refusal
names file, kind, name and field) and sends a workload the specs that apply
to it, least specific first (root namespace, namespace, selector); the
library merges them with `policy_from_specs`: a more specific spec overrides
a less specific one field by field (access logging: `disabled` and
`filter`; tracing: `randomSamplingPercentage`, `disableSpanReporting`,
custom tags by name; metrics: overrides applied in order).

Supported (anything else is refused by field):
- `accessLogging[]`: `providers` (only `envoy`, Istio's default), `disabled`,
  `match.mode`, `filter.expression` in a subset of CEL: comparisons of
  `response.code` with an integer and of `response.duration` with
  `duration('…')`, joined by `&&` / `||`, with parentheses;
- `tracing[]`: `randomSamplingPercentage` (new traces only: a caller's
  sampled context is followed), `disableSpanReporting`, `match.mode`,
  `customTags` with `literal`, `header` or `environment` (read in the
  workload's process); the exporter is the application's OpenTelemetry SDK,
  so `providers` is refused;
- `metrics[]`: `providers` (only `prometheus`), `overrides[]` with
  `match.metric` (Istio's names; TCP metrics are not emitted here, so
  overrides of them change nothing), `match.mode`,
  `disabled`, `tagOverrides` with `operation: REMOVE`, or `UPSERT` of a
  string literal (`value: "'text'"`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Istio's metric names (Telemetry API) -> the instruments emitted here.
METRICS = {
    "REQUEST_COUNT": ("istio_requests_total",),
    "REQUEST_DURATION": ("istio_request_duration_milliseconds",),
    "REQUEST_SIZE": ("istio_request_bytes",),
    "RESPONSE_SIZE": ("istio_response_bytes",),
    "TCP_OPENED_CONNECTIONS": (),
    "TCP_CLOSED_CONNECTIONS": (),
    "TCP_SENT_BYTES": (),
    "TCP_RECEIVED_BYTES": (),
    "GRPC_REQUEST_MESSAGES": ("istio_request_messages_total",),
    "GRPC_RESPONSE_MESSAGES": ("istio_response_messages_total",),
}
METRICS["ALL_METRICS"] = tuple(name for names in METRICS.values() for name in names)
_MODES: dict[str, tuple[str, ...]] = {
    "CLIENT": ("source",),
    "SERVER": ("destination",),
    "CLIENT_AND_SERVER": ("source", "destination"),
}
_TAG = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LITERAL = re.compile(r"""^\s*(?:'([^'\\]*)'|"([^"\\]*)")\s*$""")

LogFilter = Callable[[int, float], bool]  # (status, duration in ms) -> log it?


class TelemetrySpecError(ValueError):
    """A Telemetry spec this mesh cannot honour; `field` is its path."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path
        self.message = message


@dataclass(frozen=True, slots=True)
class SidePolicy:
    """What one reporter side (source = CLIENT, destination = SERVER) does."""

    access_log: bool | None = None  # None: as TelemetryConfig.access_log says
    log_filter: LogFilter | None = None
    sampling: float | None = None  # percent of new traces, None: the SDK's sampler
    report_spans: bool = True
    tags: tuple[tuple[str, str, str, str], ...] = ()  # (name, kind, key/value, default)
    disabled_metrics: frozenset[str] = frozenset()
    tag_overrides: tuple[tuple[str, str, str | None], ...] = ()  # (metric, tag, value|None)
    _labels: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict, compare=False)

    @property
    def rewrites_labels(self) -> bool:
        return bool(self.tag_overrides)

    def labels(self, metric: str, base: dict[str, str]) -> dict[str, str]:
        """`base` (a prepared label dict) with this side's tag overrides for
        `metric`, cached per prepared dict (those are cached themselves)."""
        key = (metric, id(base))
        found = self._labels.get(key)
        if found is None:
            found = self.overridden(metric, base)
            if len(self._labels) < 4096:
                self._labels[key] = found
        return found

    def overridden(self, metric: str, base: Mapping[str, str]) -> dict[str, str]:
        """A copy of `base` with this side's tag overrides for `metric`, in
        order: REMOVE drops a label, UPSERT sets (or adds) it."""
        found = dict(base)
        for name, tag, value in self.tag_overrides:
            if name == metric:
                if value is None:
                    found.pop(tag, None)
                else:
                    found[tag] = value
        return found

    def span_tags(self, get_header: Callable[[str], str | None] | None) -> dict[str, str]:
        tags: dict[str, str] = {}
        for name, kind, key, default in self.tags:
            if kind == "header":
                value = get_header(key) if get_header is not None else None
                tags[name] = value if value else default
            else:
                tags[name] = key  # literal, or the environment read when built
        return tags


@dataclass(frozen=True, slots=True)
class TelemetryPolicy:
    source: SidePolicy = SidePolicy()
    destination: SidePolicy = SidePolicy()

    def side(self, reporter: str) -> SidePolicy:
        return self.source if reporter == "source" else self.destination


NO_POLICY = TelemetryPolicy()


def check_spec(spec: Mapping[str, Any]) -> None:
    """Raise TelemetrySpecError for the first thing in `spec` (a Telemetry's
    spec, selector aside) that cannot be honoured."""
    policy_from_specs([spec])


def policy_from_specs(specs: Sequence[Mapping[str, Any]]) -> TelemetryPolicy:
    """The merged policy of `specs`, least specific first."""
    sides: dict[str, dict[str, Any]] = {"source": {}, "destination": {}}
    for spec in specs:
        _known(spec, "", ("selector", "accessLogging", "tracing", "metrics"))
        for i, entry in enumerate(_list(spec, "accessLogging")):
            _access_logging(entry, f"accessLogging[{i}]", sides)
        for i, entry in enumerate(_list(spec, "tracing")):
            _tracing(entry, f"tracing[{i}]", sides)
        for i, entry in enumerate(_list(spec, "metrics")):
            _metrics(entry, f"metrics[{i}]", sides)
    return TelemetryPolicy(**{reporter: _side(values) for reporter, values in sides.items()})


def _side(values: dict[str, Any]) -> SidePolicy:
    disabled: set[str] = set()
    overrides: list[tuple[str, str, str | None]] = []
    for metrics, off, tags in values.get("overrides", ()):
        if off:
            disabled.update(metrics)
        elif off is not None:  # a more specific override turns it back on
            disabled.difference_update(metrics)
        overrides += [(metric, tag, value) for metric in metrics for tag, value in tags]
    return SidePolicy(
        access_log=values.get("access_log"),
        log_filter=values.get("log_filter"),
        sampling=values.get("sampling"),
        report_spans=values.get("report_spans", True),
        tags=tuple(values.get("tags", {}).values()),
        disabled_metrics=frozenset(disabled),
        tag_overrides=tuple(overrides),
    )


def _access_logging(entry: Any, path: str, sides: dict[str, dict[str, Any]]) -> None:
    _known(entry, path, ("providers", "disabled", "filter", "match"))
    _providers(entry, path, {"envoy"})
    disabled = _bool(entry, path, "disabled")
    log_filter = None
    if "filter" in entry:
        _known(entry["filter"], f"{path}.filter", ("expression",))
        expression = entry["filter"].get("expression", "")
        if not isinstance(expression, str):
            raise TelemetrySpecError(f"{path}.filter.expression", "expected a string")
        log_filter = parse_filter(expression, f"{path}.filter.expression")
    for reporter in _mode(entry.get("match", {}), f"{path}.match"):
        sides[reporter]["access_log"] = not disabled
        sides[reporter]["log_filter"] = log_filter


def _tracing(entry: Any, path: str, sides: dict[str, dict[str, Any]]) -> None:
    _known(
        entry,
        path,
        ("providers", "randomSamplingPercentage", "disableSpanReporting", "customTags", "match"),
    )
    if "providers" in entry:
        raise TelemetrySpecError(
            f"{path}.providers",
            "not supported: spans go to the application's OpenTelemetry SDK exporter",
        )
    sampling = entry.get("randomSamplingPercentage")
    if sampling is not None and (
        isinstance(sampling, bool)
        or not isinstance(sampling, int | float)
        or not 0 <= sampling <= 100
    ):
        raise TelemetrySpecError(f"{path}.randomSamplingPercentage", "expected 0 to 100")
    disable = entry.get("disableSpanReporting")
    if disable is not None and not isinstance(disable, bool):
        raise TelemetrySpecError(f"{path}.disableSpanReporting", "expected true or false")
    tags = _custom_tags(entry.get("customTags", {}), f"{path}.customTags")
    for reporter in _mode(entry.get("match", {}), f"{path}.match"):
        side = sides[reporter]
        if sampling is not None:
            side["sampling"] = float(sampling)
        if disable is not None:
            side["report_spans"] = not disable
        side.setdefault("tags", {}).update(tags)


def _custom_tags(raw: Any, path: str) -> dict[str, tuple[str, str, str, str]]:
    if not isinstance(raw, Mapping):
        raise TelemetrySpecError(path, "expected a map of tag name to literal/header/environment")
    tags: dict[str, tuple[str, str, str, str]] = {}
    for name, tag in raw.items():
        where = f"{path}.{name}"
        if not isinstance(tag, Mapping) or len(tag) != 1:
            raise TelemetrySpecError(where, "expected exactly one of literal, header, environment")
        ((kind, spec),) = tag.items()
        if kind == "literal":
            _known(spec, f"{where}.literal", ("value",))
            tags[name] = (name, kind, _string(spec, f"{where}.literal", "value"), "")
        elif kind in ("header", "environment"):
            _known(spec, f"{where}.{kind}", ("name", "defaultValue"))
            key = _string(spec, f"{where}.{kind}", "name")
            default = str(spec.get("defaultValue", ""))
            if kind == "environment":  # read once, in the workload's process
                tags[name] = (name, "literal", os.environ.get(key) or default, "")
            else:
                tags[name] = (name, kind, key.lower(), default)
        else:
            raise TelemetrySpecError(
                f"{where}.{kind}", "not supported (literal/header/environment)"
            )
    return tags


def _metrics(entry: Any, path: str, sides: dict[str, dict[str, Any]]) -> None:
    _known(entry, path, ("providers", "overrides", "reportingInterval"))
    _providers(entry, path, {"prometheus"})
    if "reportingInterval" in entry:
        raise TelemetrySpecError(
            f"{path}.reportingInterval", "not supported: Prometheus pulls at its own interval"
        )
    for i, override in enumerate(_list(entry, "overrides")):
        where = f"{path}.overrides[{i}]"
        _known(override, where, ("match", "disabled", "tagOverrides"))
        match = override.get("match", {})
        _mode(match, f"{where}.match")
        if "customMetric" in match:
            raise TelemetrySpecError(f"{where}.match.customMetric", "not supported")
        metric = match.get("metric", "ALL_METRICS")
        if metric not in METRICS:
            raise TelemetrySpecError(f"{where}.match.metric", f"unknown metric {metric!r}")
        disabled = override.get("disabled")
        if disabled is not None and not isinstance(disabled, bool):
            raise TelemetrySpecError(f"{where}.disabled", "expected true or false")
        tags = _tag_overrides(override.get("tagOverrides", {}), f"{where}.tagOverrides")
        for reporter in _mode(match, f"{where}.match"):
            sides[reporter].setdefault("overrides", []).append((METRICS[metric], disabled, tags))


def _tag_overrides(raw: Any, path: str) -> list[tuple[str, str | None]]:
    if not isinstance(raw, Mapping):
        raise TelemetrySpecError(path, "expected a map of tag name to operation/value")
    out: list[tuple[str, str | None]] = []
    for tag, spec in raw.items():
        where = f"{path}.{tag}"
        if not _TAG.match(str(tag)):
            raise TelemetrySpecError(where, "not a metric label name")
        _known(spec, where, ("operation", "value"))
        operation = spec.get("operation", "UPSERT")
        if operation == "REMOVE":
            out.append((tag, None))
        elif operation == "UPSERT":
            literal = _LITERAL.match(str(spec.get("value", "")))
            if literal is None:
                raise TelemetrySpecError(
                    f"{where}.value", "only a string literal ('text') is supported, not CEL"
                )
            out.append((tag, literal.group(1) if literal.group(1) is not None else literal[2]))
        else:
            raise TelemetrySpecError(f"{where}.operation", f"unknown operation {operation!r}")
    return out


# -- the CEL subset of access-log filters -------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:(\|\||&&|==|!=|<=|>=|<|>|\(|\))|(response\.code|response\.duration)"""
    r"""|duration\(\s*(?:'([^']*)'|"([^"]*)")\s*\)|(\d+))"""
)
_UNITS = {"h": 3600e3, "m": 60e3, "s": 1e3, "ms": 1.0, "us": 1e-3, "µs": 1e-3, "ns": 1e-6}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def parse_filter(expression: str, path: str = "filter.expression") -> LogFilter:
    """A predicate for a CEL access-log filter in the supported subset."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = expression.rstrip()
    while pos < len(text):
        found = _TOKEN.match(text, pos)
        if found is None:
            raise TelemetrySpecError(
                path,
                f"unsupported CEL at {text[pos : pos + 20]!r} (the subset: response.code, "
                "response.duration, comparisons, &&, ||, parentheses)",
            )
        op, attribute, quoted1, quoted2, number = found.groups()
        if op:
            tokens.append(("op", op))
        elif attribute:
            tokens.append(("attr", attribute))
        elif number:
            tokens.append(("int", number))
        else:
            tokens.append(("duration", str(_milliseconds(quoted1 or quoted2 or "", path))))
        pos = found.end()
    if not tokens:
        raise TelemetrySpecError(path, "empty expression")
    parser = _FilterParser(tokens, path)
    predicate = parser.disjunction()
    if parser.pos != len(tokens):
        raise TelemetrySpecError(path, f"unexpected {tokens[parser.pos][1]!r}")
    return predicate


def _milliseconds(text: str, path: str) -> float:
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise TelemetrySpecError(path, f"not a duration: {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


class _FilterParser:
    def __init__(self, tokens: list[tuple[str, str]], path: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.path = path

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _next(self) -> tuple[str, str]:
        token = self._peek()
        if token is None:
            raise TelemetrySpecError(self.path, "expression ends too early")
        self.pos += 1
        return token

    def disjunction(self) -> LogFilter:
        terms = [self.conjunction()]
        while self._peek() == ("op", "||"):
            self.pos += 1
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else lambda s, d: any(t(s, d) for t in terms)

    def conjunction(self) -> LogFilter:
        terms = [self.comparison()]
        while self._peek() == ("op", "&&"):
            self.pos += 1
            terms.append(self.comparison())
        return terms[0] if len(terms) == 1 else lambda s, d: all(t(s, d) for t in terms)

    def comparison(self) -> LogFilter:
        if self._peek() == ("op", "("):
            self.pos += 1
            inner = self.disjunction()
            if self._peek() != ("op", ")"):
                raise TelemetrySpecError(self.path, "missing ')'")
            self.pos += 1
            return inner
        kind, attribute = self._next()
        if kind != "attr":
            raise TelemetrySpecError(self.path, f"expected response.code or response.duration, "
                                     f"got {attribute!r}")  # fmt: skip
        kind, op = self._next()
        if kind != "op" or op not in _COMPARE:
            raise TelemetrySpecError(self.path, f"expected a comparison after {attribute}")
        kind, literal = self._next()
        want = "int" if attribute == "response.code" else "duration"
        if kind != want:
            raise TelemetrySpecError(
                self.path, f"{attribute} compares with "
                + ("an integer" if want == "int" else "duration('…')")
            )  # fmt: skip
        value, compare = float(literal), _COMPARE[op]
        if attribute == "response.code":
            return lambda s, d: compare(s, value)
        return lambda s, d: compare(d, value)


# -- small checks ---------------------------------------------------------------------


def _known(obj: Any, path: str, fields: Sequence[str]) -> None:
    if not isinstance(obj, Mapping):
        raise TelemetrySpecError(path or "spec", "expected an object")
    for key in obj:
        if key not in fields:
            where = f"{path}.{key}" if path else str(key)
            raise TelemetrySpecError(where, "not supported by this mesh")


def _list(obj: Mapping[str, Any], key: str) -> list[Any]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise TelemetrySpecError(key, "expected a list")
    return value


def _bool(obj: Mapping[str, Any], path: str, key: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise TelemetrySpecError(f"{path}.{key}", "expected true or false")
    return value


def _string(obj: Mapping[str, Any], path: str, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise TelemetrySpecError(f"{path}.{key}", "expected a non-empty string")
    return value


def _providers(entry: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    for i, provider in enumerate(entry.get("providers", [])):
        name = provider.get("name") if isinstance(provider, Mapping) else None
        if name not in allowed:
            raise TelemetrySpecError(
                f"{path}.providers[{i}].name",
                f"only {', '.join(sorted(allowed))} (Istio's default provider) is supported",
            )


def _mode(match: Any, path: str) -> tuple[str, ...]:
    """The reporters a `match` (at `path`) selects: Istio's mode, CLIENT =
    the source reporter, SERVER = the destination."""
    _known(match, path, ("mode", "metric", "customMetric"))
    mode = match.get("mode", "CLIENT_AND_SERVER")
    if mode not in _MODES:
        raise TelemetrySpecError(f"{path}.mode", f"unknown mode {mode!r}")
    return _MODES[mode]
