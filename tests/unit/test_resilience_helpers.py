"""Pure helpers: backoff bounds, deadline headers, rewrites, redirects, mirroring."""

from __future__ import annotations

import random

import pytest
from stats import assert_binomial
from tenacity import Retrying, retry_if_result, stop_after_attempt

from proxyless_mesh.model import (
    HeaderMutation,
    MatchKind,
    MirrorPolicy,
    PathMatcher,
    RedirectAction,
    RegexRewrite,
    RouteAction,
    WeightedCluster,
)
from proxyless_mesh.resilience import (
    apply_header_mutation,
    backoff_cap,
    expected_timeout_ms,
    grpc_timeout_header,
    redirect_location,
    rewrite_authority,
    rewrite_path,
    shadow_host,
    should_mirror,
    wait_envoy_jittered,
)

TO = (WeightedCluster("reviews", 100),)


def test_backoff_follows_envoys_bounds_and_fills_them() -> None:
    assert [backoff_cap(n, 0.025, 0.25) for n in (1, 2, 3, 4, 100)] == pytest.approx(
        [0.025, 0.075, 0.175, 0.25, 0.25]
    )
    wait = wait_envoy_jittered(0.025, 0.25, random.Random(3))
    for retry, cap in ((1, 0.025), (2, 0.075), (3, 0.175), (6, 0.25)):
        draws = [wait.interval(retry) for _ in range(2000)]
        assert min(draws) >= 0 and max(draws) <= cap
        assert max(draws) > 0.95 * cap and min(draws) < 0.05 * cap  # fully jittered


def test_backoff_is_a_tenacity_wait_strategy() -> None:
    slept: list[float] = []
    retrying = Retrying(
        wait=wait_envoy_jittered(0.025, 0.25, random.Random(5)),
        stop=stop_after_attempt(4),
        retry=retry_if_result(lambda r: r != "ok"),
        sleep=slept.append,
    )
    answers = iter(["no", "no", "no", "ok"])
    assert retrying(lambda: next(answers)) == "ok"
    assert len(slept) == 3
    assert all(0 <= s <= cap for s, cap in zip(slept, (0.025, 0.075, 0.175), strict=True))


@pytest.mark.parametrize(
    ("seconds", "header"),
    [
        (0.5, "500m"),
        (2.0, "2S"),
        (90.0, "90S"),
        (120.0, "2M"),
        (3600.0, "1H"),
        (0.0001, "100u"),
        (0.0123456789, "12345679n"),
        (0.123456789, "123457u"),  # 9 digits of ns do not fit: rounded up to us
        (0.0, "1n"),
    ],
)
def test_grpc_timeout_header(seconds: float, header: str) -> None:
    assert grpc_timeout_header(seconds) == header


def test_expected_timeout_ms_never_promises_more_nor_zero() -> None:
    assert expected_timeout_ms(0.2509) == "250"
    assert expected_timeout_ms(0.0001) == "1"


def test_prefix_rewrite_swaps_the_matched_prefix_and_keeps_the_query() -> None:
    prefix = PathMatcher(MatchKind.PREFIX, "/v1/")
    action = RouteAction(clusters=TO, prefix_rewrite="/api/")
    assert rewrite_path("/v1/items?id=3", prefix, action) == "/api/items?id=3"
    loose = PathMatcher(MatchKind.PREFIX, "/V1/", case_sensitive=False)
    assert rewrite_path("/v1/items", loose, action) == "/api/items"
    exact = PathMatcher(MatchKind.EXACT, "/old")
    assert rewrite_path("/old?x=1", exact, RouteAction(TO, prefix_rewrite="/new")) == "/new?x=1"
    untouched = RouteAction(TO)
    assert rewrite_path("/v1/items", prefix, untouched) == "/v1/items"


def test_regex_rewrite_replaces_every_match_with_re2_groups() -> None:
    match = PathMatcher(MatchKind.PREFIX, "/")
    action = RouteAction(
        TO, regex_rewrite=RegexRewrite(pattern=r"^/service/([^/]+)(/.*)$", substitution=r"\2/\1")
    )
    assert rewrite_path("/service/foo/v1/api?q=1", match, action) == "/v1/api/foo?q=1"
    every = RouteAction(TO, regex_rewrite=RegexRewrite(pattern="o", substitution="0"))
    assert rewrite_path("/foo/boo", match, every) == "/f00/b00"
    whole = RouteAction(TO, regex_rewrite=RegexRewrite(pattern="^/(a)$", substitution=r"[\0]\\"))
    assert rewrite_path("/a", match, whole) == "[/a]\\"


def test_rewrite_authority() -> None:
    assert rewrite_authority("reviews.mesh:80", RouteAction(TO, host_rewrite="new.mesh")) == (
        "new.mesh"
    )
    assert rewrite_authority("reviews.mesh:80", RouteAction(TO)) == "reviews.mesh:80"


def test_header_mutation_removes_then_sets_then_adds() -> None:
    before = [("Accept", "*/*"), ("x-debug", "1"), ("X-Env", "prod"), ("x-env", "qa"), ("a", "1")]
    mutation = HeaderMutation(
        set=(("x-env", "canary"), ("x-empty", "")),
        add=(("a", "2"), ("x-debug", "again")),
        remove=("X-DEBUG",),
    )
    assert apply_header_mutation(before, mutation) == [
        ("Accept", "*/*"),
        ("a", "1"),
        ("x-env", "canary"),
        ("a", "2"),
        ("x-debug", "again"),
    ]


@pytest.mark.parametrize(
    ("redirect", "expected"),
    [
        (RedirectAction(path="/new"), (301, "http://shop.mesh:8080/new?q=1")),
        (RedirectAction(path="/new?z=9"), (301, "http://shop.mesh:8080/new?z=9")),
        (RedirectAction(host="other.mesh"), (301, "http://other.mesh/old/x?q=1")),
        (RedirectAction(host="other.mesh", port=9090), (301, "http://other.mesh:9090/old/x?q=1")),
        (RedirectAction(scheme="https", response_code=308), (308, "https://shop.mesh/old/x?q=1")),
        (RedirectAction(port=80), (301, "http://shop.mesh/old/x?q=1")),
        (RedirectAction(prefix_rewrite="/v2/"), (301, "http://shop.mesh:8080/v2/x?q=1")),
    ],
)
def test_redirect_location(redirect: RedirectAction, expected: tuple[int, str]) -> None:
    got = redirect_location(
        scheme="http",
        host="shop.mesh",
        port=8080,
        path="/old/x?q=1",
        redirect=redirect,
        match=PathMatcher(MatchKind.PREFIX, "/old/"),
    )
    assert got == expected


def test_redirect_to_an_ipv6_host_brackets_it() -> None:
    got = redirect_location(
        scheme="http", host="a.mesh", port=None, path="/", redirect=RedirectAction(host="::1")
    )
    assert got == (301, "http://[::1]/")


@pytest.mark.parametrize(
    ("host", "shadow"),
    [
        ("reviews.default.mesh:8080", "reviews.default.mesh-shadow:8080"),
        ("reviews.default.mesh", "reviews.default.mesh-shadow"),
        ("[::1]:8080", "[::1]-shadow:8080"),
        ("[::1]", "[::1]-shadow"),
    ],
)
def test_shadow_host_goes_before_the_port(host: str, shadow: str) -> None:
    assert shadow_host(host) == shadow


def test_mirror_fraction_over_ten_thousand_draws() -> None:
    rng = random.Random(11)
    hits = sum(should_mirror(MirrorPolicy("reviews-v2", 0.25), rng) for _ in range(10_000))
    assert_binomial(hits, 10_000, 0.25, "mirrored at 25 %")
    assert all(should_mirror(MirrorPolicy("m", 1.0), rng) for _ in range(100))
    assert not any(should_mirror(MirrorPolicy("m", 0.0), rng) for _ in range(100))
