"""The native path of Istio's request metrics against the OpenTelemetry SDK
path (issue 25): one Telemetry records generated requests through both (its
native aggregator and an SDK MeterProvider with an InMemoryMetricReader),
under generated Telemetry API metric overrides (disabled metrics, tags
removed or set, per mode, changed midway) and label-set bounds; every metric
must hold the same series with the same counts, buckets and sums."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

from proxyless_mesh.telemetry import Peer, Telemetry, TelemetryConfig, Workload, policy_from_specs
from proxyless_mesh.telemetry._policy import METRICS

Series = dict[str, dict[frozenset[tuple[str, str]], Any]]

PEERS = [
    Peer("reviews-v1", "shop", "reviews", "v1", "Kubernetes", "reviews", "v1"),
    Peer("reviews-v2", "shop", "reviews", "v2", "Kubernetes", "reviews", "v2"),
    Peer("ratings", "shop"),
    Peer(),
]
HOSTS = ["reviews.shop.mesh:9080", "ratings.shop.mesh:80", "evil.example:443"]
TAGS = ["response_code", "source_workload", "destination_service", "request_protocol", "extra"]

requests = st.lists(
    st.tuples(
        st.sampled_from(["source", "destination"]),
        st.sampled_from(["http", "grpc"]),
        st.sampled_from(PEERS),
        st.sampled_from(HOSTS),
        st.booleans(),  # mTLS
        st.sampled_from([200, 404, 503]),
        st.sampled_from([None, 0, 14]),
        st.sampled_from([(), ("UO",), ("NR",), ("UF", "URX")]),
        st.tuples(st.integers(0, 1 << 20), st.integers(0, 1 << 20)),
        st.tuples(st.integers(0, 5), st.integers(0, 5)),
    ),
    max_size=25,
)
override = st.fixed_dictionaries(
    {"match": st.fixed_dictionaries(
        {"metric": st.sampled_from(sorted(METRICS))},
        optional={"mode": st.sampled_from(["CLIENT", "SERVER", "CLIENT_AND_SERVER"])},
    )},
    optional={
        "disabled": st.booleans(),
        "tagOverrides": st.dictionaries(
            st.sampled_from(TAGS),
            st.one_of(
                st.just({"operation": "REMOVE"}),
                st.sampled_from(["'x'", "'y'"]).map(lambda v: {"value": v}),
            ),
            max_size=2,
        ),
    },
)  # fmt: skip
specs = st.lists(st.fixed_dictionaries({"metrics": st.lists(
    st.fixed_dictionaries({"overrides": st.lists(override, max_size=3)}), max_size=2
)}), max_size=2)  # fmt: skip


def play(telemetry: Telemetry, batch: Sequence[tuple[Any, ...]]) -> None:
    for reporter, protocol, peer, host, secure, status, grpc, flags, sizes, messages in batch:
        call = telemetry.call(reporter, protocol, "GET", host, "/p")
        assert call is not None
        call.peer_workload = peer
        call.secure = secure
        call.peer_principal = "spiffe://cluster.local/ns/shop/sa/x" if secure else "unknown"
        call.request_bytes, call.response_bytes = sizes
        call.request_messages, call.response_messages = messages
        call.finish(status, flags, grpc_status=grpc)


def otel_series(reader: InMemoryMetricReader) -> Series:
    out: Series = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found = out.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    labels = frozenset(point.attributes.items())
                    if hasattr(point, "bucket_counts"):
                        cumulative, total = [], 0
                        for n in point.bucket_counts:
                            total += n
                            cumulative.append(total)
                        found[labels] = (point.count, point.sum, tuple(cumulative))
                    else:
                        found[labels] = point.value
    return {name: found for name, found in out.items() if found and name != "istio_build"}


def native_series(text: str) -> Series:
    out: Series = {}
    histograms: dict[tuple[str, frozenset[tuple[str, str]]], dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            if family.type == "counter" and family.name.startswith("istio_"):
                out.setdefault(sample.name, {})[frozenset(labels.items())] = int(sample.value)
            elif family.type == "histogram":
                le = labels.pop("le", None)
                parts = histograms.setdefault((family.name, frozenset(labels.items())), {})
                if le is not None:
                    parts.setdefault("buckets", []).append(int(sample.value))
                else:
                    parts[sample.name.rpartition("_")[2]] = sample.value
    for (name, labels), parts in histograms.items():
        entry = (int(parts["count"]), parts["sum"], tuple(parts["buckets"]))
        out.setdefault(name, {})[labels] = entry
    return out


@given(requests, specs, requests, specs, st.sampled_from([1, 3, 2048]))
def test_native_and_otel_paths_count_the_same(
    first: list[tuple[Any, ...]],
    first_specs: list[dict[str, Any]],
    second: list[tuple[Any, ...]],
    second_specs: list[dict[str, Any]],
    bound: int,
) -> None:
    reader = InMemoryMetricReader()
    config = TelemetryConfig(
        meter_provider=MeterProvider(metric_readers=[reader]), tracing=False, max_label_sets=bound
    )
    me = Workload("frontend", "shop", "spiffe://cluster.local/ns/shop/sa/frontend")
    telemetry = Telemetry(config, me)
    telemetry.apply_policy(policy_from_specs(first_specs))
    play(telemetry, first)
    telemetry.apply_policy(policy_from_specs(second_specs))  # the control plane changed it
    play(telemetry, second)
    native = native_series(telemetry.prometheus_text())
    assert native == otel_series(reader)
