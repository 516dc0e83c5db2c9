"""Request hash keys: Envoy's hash policy evaluation."""

from __future__ import annotations

from proxyless_mesh.balancer import CookieToSet, hash64, hash_key
from proxyless_mesh.model import HashPolicy, HashPolicyKind

K = HashPolicyKind


def key(
    *policies: HashPolicy,
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    source_ip: str | None = None,
) -> tuple[int | None, CookieToSet | None]:
    return hash_key(
        policies,
        header=(headers or {}).get,
        cookie=(cookies or {}).get,
        query=(query or {}).get,
        source_ip=source_ip,
        new_cookie_value=lambda: "c0ffee",
    )


def _none(name: str) -> str | None:
    return None


def rotl(h: int) -> int:
    return ((h << 1) | (h >> 63)) & ((1 << 64) - 1)


def test_hash64_is_stable_and_64_bit() -> None:
    # A fixed value: the same key must land on the same endpoint in every process.
    assert hash64("user-1") == hash64("user-1") != hash64("user-2")
    assert 0 <= hash64("user-1") < 2**64
    assert hash64("user-1") == 9863422088627006618  # pinned: BLAKE2b-64, little-endian


def test_each_source() -> None:
    header = HashPolicy(K.HEADER, "x-user")
    assert key(header, headers={"x-user": "u1"}) == (hash64("u1"), None)
    assert key(header) == (None, None)
    cookie = HashPolicy(K.COOKIE, "session")
    assert key(cookie, cookies={"session": "s1"}) == (hash64("s1"), None)
    query = HashPolicy(K.QUERY_PARAMETER, "shard")
    assert key(query, query={"shard": "7"}) == (hash64("7"), None)
    ip = HashPolicy(K.SOURCE_IP)
    assert key(ip, source_ip="10.1.2.3") == (hash64("10.1.2.3"), None)
    assert key(ip) == (None, None)


def test_policies_combine_in_order() -> None:
    a = HashPolicy(K.HEADER, "a")
    b = HashPolicy(K.HEADER, "b")
    got, _ = key(a, b, headers={"a": "1", "b": "2"})
    assert got == rotl(hash64("1")) ^ hash64("2")
    # A policy with no value is skipped.
    assert key(a, b, headers={"b": "2"})[0] == hash64("2")


def test_terminal_stops_once_a_hash_exists() -> None:
    a = HashPolicy(K.HEADER, "a", terminal=True)
    b = HashPolicy(K.HEADER, "b")
    assert key(a, b, headers={"a": "1", "b": "2"})[0] == hash64("1")
    # Terminal without a value: evaluation continues.
    assert key(a, b, headers={"b": "2"})[0] == hash64("2")


def test_cookie_with_ttl_is_generated_when_absent() -> None:
    policy = HashPolicy(K.COOKIE, "session", cookie_path="/app", cookie_ttl=3600.0)
    got, to_set = key(policy)
    assert to_set == CookieToSet("session", "c0ffee", "/app", 3600.0)
    assert got == hash64("c0ffee")  # the request hashes as its next ones will
    # Present: used, nothing to set.
    assert key(policy, cookies={"session": "abc"}) == (hash64("abc"), None)
    # No ttl: no generation, no hash.
    assert key(HashPolicy(K.COOKIE, "session")) == (None, None)


def test_generated_cookie_values_differ() -> None:
    policy = (HashPolicy(K.COOKIE, "s", cookie_ttl=0.0),)
    values = set()
    for _ in range(20):
        _, to_set = hash_key(policy, header=_none, cookie=_none, query=_none, source_ip=None)
        assert to_set is not None and len(to_set.value) == 16
        values.add(to_set.value)
    assert len(values) == 20
