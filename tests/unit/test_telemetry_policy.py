"""The Telemetry API as the library honours it: the CEL subset of access-log
filters, refusals by field, merging least specific first, and the policy's
effect on metrics, access lines and spans."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxyless_mesh.telemetry import Telemetry, TelemetryConfig, Workload
from proxyless_mesh.telemetry._policy import (
    NO_POLICY,
    TelemetrySpecError,
    check_spec,
    parse_filter,
    policy_from_specs,
)


def test_filter_subset_evaluates_code_and_duration() -> None:
    errors = parse_filter("response.code >= 400")
    assert [errors(code, 1.0) for code in (200, 404, 503)] == [False, True, True]
    slow_ok = parse_filter("response.duration > duration('100ms') && response.code == 200")
    assert slow_ok(200, 150.0) and not slow_ok(200, 50.0) and not slow_ok(500, 150.0)
    either = parse_filter('(response.code == 503 || response.duration >= duration("1.5s"))')
    assert either(503, 0.0) and either(200, 1500.0) and not either(200, 1499.0)
    minutes = parse_filter("response.duration < duration('1m30s')")
    assert minutes(200, 89_999.0) and not minutes(200, 90_000.0)


@pytest.mark.parametrize(
    ("expression", "refusal"),
    [
        ("request.headers['x'] == 'y'", "unsupported CEL"),
        ("response.code >= '400'", "unsupported CEL"),
        ("response.duration > 100", "compares with duration"),
        ("response.code >= 400 &&", "ends too early"),
        ("response.code 400", "expected a comparison"),
        ("(response.code == 1", "missing ')'"),
        ("response.duration > duration('soon')", "not a duration"),
    ],
)
def test_filter_outside_the_subset_is_refused(expression: str, refusal: str) -> None:
    with pytest.raises(TelemetrySpecError, match=re.escape(refusal)) as caught:
        check_spec({"accessLogging": [{"filter": {"expression": expression}}]})
    assert caught.value.field == "accessLogging[0].filter.expression"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"tracing": [{"providers": [{"name": "zipkin"}]}]}, "tracing[0].providers"),
        (
            {"accessLogging": [{"providers": [{"name": "otel"}]}]},
            "accessLogging[0].providers[0].name",
        ),
        ({"tracing": [{"randomSamplingPercentage": 101}]}, "tracing[0].randomSamplingPercentage"),
        ({"metrics": [{"reportingInterval": "5s"}]}, "metrics[0].reportingInterval"),
        (
            {"metrics": [{"overrides": [{"match": {"customMetric": "x"}}]}]},
            "metrics[0].overrides[0].match.customMetric",
        ),
        (
            {"metrics": [{"overrides": [{"tagOverrides": {"host": {"value": "request.host"}}}]}]},
            "metrics[0].overrides[0].tagOverrides.host.value",
        ),
        ({"tracing": [{"match": {"mode": "BOTH"}}]}, "tracing[0].match.mode"),
        ({"targetRefs": [{"kind": "Gateway"}]}, "targetRefs"),
        ({"tracing": [{"customTags": {"t": {"cel": {}}}}]}, "tracing[0].customTags.t.cel"),
    ],
)  # fmt: skip
def test_unsupported_fields_are_refused_by_path(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(TelemetrySpecError) as caught:
        check_spec(spec)
    assert caught.value.field == field


def test_more_specific_specs_override_field_by_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTER_TIER", "gold")
    root = {
        "accessLogging": [{"disabled": True}],
        "tracing": [
            {
                "randomSamplingPercentage": 1,
                "customTags": {
                    "tier": {"environment": {"name": "CLUSTER_TIER"}},
                    "team": {"literal": {"value": "core"}},
                },
            }
        ],
        "metrics": [{"overrides": [{"match": {"metric": "REQUEST_SIZE"}, "disabled": True}]}],
    }
    server_errors = {"match": {"mode": "SERVER"}, "filter": {"expression": "response.code >= 500"}}
    client_size = {"match": {"metric": "REQUEST_SIZE", "mode": "CLIENT"}, "disabled": False}
    namespace = {
        "accessLogging": [server_errors],
        "tracing": [{"customTags": {"team": {"literal": {"value": "shop"}}}}],
        "metrics": [{"overrides": [client_size]}],
    }
    policy = policy_from_specs([root, namespace])
    assert policy.source.access_log is False and policy.source.log_filter is None
    assert policy.destination.access_log is True and policy.destination.log_filter is not None
    assert policy.source.sampling == 1.0
    assert policy.source.span_tags(None) == {"tier": "gold", "team": "shop"}
    assert policy.source.disabled_metrics == frozenset()  # turned back on for CLIENT
    assert policy.destination.disabled_metrics == {"istio_request_bytes"}


def _telemetry(**config: Any) -> tuple[Telemetry, InMemoryMetricReader, InMemorySpanExporter]:
    reader, exporter = InMemoryMetricReader(), InMemorySpanExporter()
    tracer = TracerProvider()
    tracer.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(
        TelemetryConfig(
            meter_provider=MeterProvider(metric_readers=[reader]), tracer_provider=tracer, **config
        ),
        Workload("front", "shop"),
    )
    return telemetry, reader, exporter


def _metrics(reader: InMemoryMetricReader) -> dict[str, list[dict[str, Any]]]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: [dict(p.attributes or {}) for p in metric.data.data_points]  # type: ignore[union-attr]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }


def _one(telemetry: Telemetry, status: int, reporter: str = "source", **headers: str) -> None:
    call = telemetry.call(reporter, "http", "GET", "api.shop.mesh:80", "/")
    assert call is not None
    if reporter == "destination":
        call.start_server_span(headers.get)
    else:
        call.request_header = headers.get
        call.start_client_span()
    call.finish(status)


def test_metric_overrides_disable_and_rewrite_labels() -> None:
    telemetry, reader, _ = _telemetry(tracing=False)
    telemetry.apply_policy(
        policy_from_specs(
            [
                {
                    "metrics": [
                        {
                            "overrides": [
                                {
                                    "match": {"metric": "REQUEST_SIZE", "mode": "CLIENT"},
                                    "disabled": True,
                                },
                                {
                                    "match": {"metric": "REQUEST_COUNT"},
                                    "tagOverrides": {
                                        "destination_principal": {"operation": "REMOVE"},
                                        "mesh_tier": {"value": "'gold'"},
                                    },
                                },
                            ]
                        }
                    ]
                }
            ]
        )
    )  # fmt: skip
    _one(telemetry, 200)
    _one(telemetry, 200)
    found = _metrics(reader)
    assert "istio_request_bytes" not in found  # disabled for the client side
    (count,) = found["istio_requests_total"]
    assert count["mesh_tier"] == "gold" and "destination_principal" not in count
    (duration,) = found["istio_request_duration_milliseconds"]
    assert "destination_principal" in duration and "mesh_tier" not in duration


def test_access_log_filter_and_enabling(caplog: pytest.LogCaptureFixture) -> None:
    telemetry, _, _ = _telemetry(metrics=False)  # access logs off in the config
    assert telemetry.access is None
    telemetry.apply_policy(
        policy_from_specs([{"accessLogging": [{"filter": {"expression": "response.code >= 400"}}]}])
    )
    with caplog.at_level(logging.INFO, logger="proxyless_mesh.access"):
        for status in (200, 404, 200, 503):
            _one(telemetry, status)
    logged = [r.getMessage().split('" ', 1)[1].split(" ", 1)[0] for r in caplog.records]
    assert logged == ["404", "503"]


def test_tracing_sampling_and_custom_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    telemetry, _, exporter = _telemetry(metrics=False)
    monkeypatch.setenv("POD_ZONE", "z1")
    telemetry.apply_policy(
        policy_from_specs(
            [
                {
                    "tracing": [
                        {"match": {"mode": "CLIENT"}, "randomSamplingPercentage": 0},
                        {
                            "match": {"mode": "SERVER"},
                            "customTags": {
                                "tenant": {"header": {"name": "X-Tenant", "defaultValue": "none"}},
                                "zone": {"environment": {"name": "POD_ZONE"}},
                                "team": {"literal": {"value": "shop"}},
                            },
                        },
                    ]
                }
            ]
        )
    )  # fmt: skip
    for _ in range(20):
        _one(telemetry, 200)  # new traces at 0 %: none
    assert exporter.get_finished_spans() == ()
    _one(telemetry, 200, "destination", **{"x-tenant": "acme"})
    _one(telemetry, 200, "destination")
    first, second = exporter.get_finished_spans()
    assert (first.attributes or {})["tenant"] == "acme"
    assert (second.attributes or {})["tenant"] == "none"
    assert {k: (first.attributes or {})[k] for k in ("zone", "team")} == {
        "zone": "z1",
        "team": "shop",
    }


def test_access_log_choice_per_side_follows_each_policy_set(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The choice is resolved when a policy is set (not per call): it must
    # follow every replacement, whichever way the policy is set.
    telemetry, _, _ = _telemetry(metrics=False, tracing=False, access_log=True)
    telemetry.apply_policy(
        policy_from_specs([{"accessLogging": [{"match": {"mode": "CLIENT"}, "disabled": True}]}])
    )
    with caplog.at_level(logging.INFO, logger="proxyless_mesh.access"):
        _one(telemetry, 201, "source")
        _one(telemetry, 202, "destination")
        telemetry.policy = NO_POLICY
        _one(telemetry, 203, "source")
    logged = [r.getMessage().split('" ', 1)[1].split(" ", 1)[0] for r in caplog.records]
    assert logged == ["202", "203"]
