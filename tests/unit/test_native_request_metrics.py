"""The native aggregator of Istio's request metrics (`RequestMetrics`,
native/src/metrics.rs): its Prometheus text is parsed back with
prometheus_client's parser (a third-party reading of the format) and must
give the counts, the cumulative buckets, the sums and the escaped labels of
what was recorded."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from proxyless_mesh import native_core
from proxyless_mesh.telemetry._metrics import BYTES_BUCKETS, DURATION_BUCKETS

Labels = list[tuple[str, str]]


def aggregator() -> Any:
    return native_core.member("RequestMetrics")(DURATION_BUCKETS, BYTES_BUCKETS)


def samples(text: str) -> Iterator[tuple[str, str, dict[str, str], float]]:
    """(family type, sample name, labels, value) of every sample."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield family.type, sample.name, dict(sample.labels), sample.value


def series(text: str, name: str, labels: Labels) -> dict[str, float]:
    """The samples of one series: {sample name or bucket le: value}."""
    want = dict(labels)
    out: dict[str, float] = {}
    for _, sample, found, value in samples(text):
        if not sample.startswith(name):
            continue
        le = found.pop("le", None)
        if found == want:
            out[f"le={float(le)}" if le is not None else sample] = value
    return out


ONE = [("reporter", "source"), ("response_code", "200")]
TWO = [("reporter", "source"), ("response_code", "503")]


def test_counts_buckets_and_sums() -> None:
    stats = aggregator()
    one = stats.register([ONE, ONE, ONE, ONE, None, None])
    two = stats.register([TWO, TWO, TWO, TWO, TWO, TWO])
    for duration in (0.2, 0.5, 3.0, 70000.0):
        stats.record(one, duration, 10, 1 << 30, 0, 0)
    stats.record(two, 12.5, 0, 1, 3, 6)
    text = stats.render()

    assert series(text, "istio_requests_total", ONE) == {"istio_requests_total": 4}
    assert series(text, "istio_requests_total", TWO) == {"istio_requests_total": 1}
    duration = series(text, "istio_request_duration_milliseconds", ONE)
    # Upper bounds are inclusive: 0.5 is in le="0.5"; 70 s is past 60 s.
    assert duration["le=0.5"] == 2
    assert duration["le=5.0"] == 3
    assert duration["le=60000.0"] == 3
    assert duration["le=300000.0"] == duration["le=inf"] == 4
    assert duration["istio_request_duration_milliseconds_count"] == 4
    assert duration["istio_request_duration_milliseconds_sum"] == 0.2 + 0.5 + 3.0 + 70000.0
    response = series(text, "istio_response_bytes", ONE)
    assert response["le=16777216.0"] == 0  # 1 GiB is past the last bound (16 MiB)
    assert response["le=inf"] == 4
    assert response["istio_response_bytes_sum"] == 4 * (1 << 30)
    # Message counts only where the group records them (gRPC).
    assert series(text, "istio_request_messages_total", ONE) == {}
    assert series(text, "istio_request_messages_total", TWO) == {"istio_request_messages_total": 3}
    assert series(text, "istio_response_messages_total", TWO) == {
        "istio_response_messages_total": 6
    }


def test_help_and_type_lines_once_per_family() -> None:
    stats = aggregator()
    stats.record(stats.register([ONE] * 4 + [None, None]), 1.0, 1, 1, 0, 0)
    stats.record(stats.register([TWO] * 4 + [None, None]), 1.0, 1, 1, 0, 0)
    lines = stats.render().splitlines()
    assert lines.count("# TYPE istio_requests_total counter") == 1
    assert lines.count("# TYPE istio_request_duration_milliseconds histogram") == 1
    assert sum(line.startswith("# HELP istio_request_bytes ") for line in lines) == 1
    assert not any("messages" in line for line in lines)  # no series, no family


def test_label_values_are_escaped() -> None:
    stats = aggregator()
    nasty = [("reporter", "source"), ("destination_service", 'a"b\\c\nd é{},=')]
    stats.record(stats.register([nasty, None, None, None, None, None]), 1.0, 0, 0, 0, 0)
    text = stats.render()
    assert 'destination_service="a\\"b\\\\c\\nd é{},="' in text
    assert series(text, "istio_requests_total", nasty) == {"istio_requests_total": 1}


def test_groups_are_deduplicated_and_share_series() -> None:
    stats = aggregator()
    first = stats.register([ONE, ONE, ONE, ONE, None, None])
    assert stats.register([ONE, ONE, ONE, ONE, None, None]) == first
    # Another group whose count series is ONE's (an override removed the code).
    other = stats.register([ONE, TWO, TWO, TWO, None, None])
    assert other != first
    stats.record(first, 1.0, 0, 0, 0, 0)
    stats.record(other, 1.0, 0, 0, 0, 0)
    text = stats.render()
    assert series(text, "istio_requests_total", ONE) == {"istio_requests_total": 2}
    assert series(text, "istio_request_duration_milliseconds", ONE)["le=inf"] == 1
    assert series(text, "istio_request_duration_milliseconds", TWO)["le=inf"] == 1
    assert stats.groups() == 2


def test_extra_families_are_rendered_after_the_request_metrics() -> None:
    stats = aggregator()
    extra = [
        ("istio_build", "gauge", "build", [([("component", "proxy"), ("tag", "1.0")], 1.0)]),
        ("envoy_cluster_upstream_rq_active", "gauge", "busy", [([("cluster_name", "a|b")], 3.0)]),
    ]
    found = {
        (kind, name): (labels, value) for kind, name, labels, value in samples(stats.render(extra))
    }
    assert found == {
        ("gauge", "istio_build"): ({"component": "proxy", "tag": "1.0"}, 1.0),
        ("gauge", "envoy_cluster_upstream_rq_active"): ({"cluster_name": "a|b"}, 3.0),
    }


@pytest.mark.parametrize(
    "group",
    [
        [ONE] * 5,  # one entry per metric: six
        [[("1abc", "x")], None, None, None, None, None],  # not a label name
        [[("__name__", "x")], None, None, None, None, None],  # reserved
    ],
)
def test_bad_groups_are_refused(group: list[Labels | None]) -> None:
    with pytest.raises(ValueError):
        aggregator().register(group)


def test_unknown_group_and_bad_buckets_are_refused() -> None:
    with pytest.raises(ValueError):
        aggregator().record(7, 1.0, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        native_core.member("RequestMetrics")([1.0, 1.0], BYTES_BUCKETS)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 4e6, allow_nan=False),
            st.integers(0, 1 << 26),
            st.integers(0, 1 << 26),
        ),
        max_size=40,
    )
)
def test_buckets_are_cumulative_counts_of_le(records: list[tuple[float, int, int]]) -> None:
    """Against a plain reading of `le`: bucket i counts values <= bound i."""
    stats = aggregator()
    group = stats.register([ONE] * 4 + [None, None])
    for duration, request, response in records:
        stats.record(group, duration, request, response, 0, 0)
    text = stats.render()  # a registered group shows zeros before its first request
    for name, bounds, values in (
        ("istio_request_duration_milliseconds", DURATION_BUCKETS, [r[0] for r in records]),
        ("istio_request_bytes", BYTES_BUCKETS, [r[1] for r in records]),
        ("istio_response_bytes", BYTES_BUCKETS, [r[2] for r in records]),
    ):
        found = series(text, name, ONE)
        ordered = sorted(values)
        for bound in bounds:
            assert found[f"le={float(bound)}"] == bisect.bisect_right(ordered, bound)
        assert found["le=inf"] == found[f"{name}_count"] == len(values)
        total = 0.0
        for value in values:  # the order the aggregator added them
            total += value
        assert found[f"{name}_sum"] == total
