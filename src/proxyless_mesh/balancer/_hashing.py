"""Request hash keys for consistent hashing (Envoy's RouteAction.hash_policy).

One 64-bit hash function serves both sides of consistent hashing: placing
endpoints on the ring / Maglev table and hashing a request's key. Envoy uses
xxHash64; the stdlib has no xxHash, so we use BLAKE2b cut to 8 bytes: it is
in `hashlib` (no dependency), well mixed, and the same in every process and
on every platform, which is what makes a key land on the same endpoint in
every client of the mesh.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import blake2b

from proxyless_mesh.model import HashPolicy, HashPolicyKind

_MASK64 = (1 << 64) - 1


def hash64(text: str) -> int:
    """A stable, unsigned 64-bit hash of `text`."""
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True, slots=True)
class CookieToSet:
    """A cookie the integration must set on the response (Envoy generates one
    when a cookie hash policy has a ttl and the request carries none, so the
    client's next requests stick to the same endpoint). `ttl` 0 means a
    session cookie (no Max-Age)."""

    name: str
    value: str
    path: str
    ttl: float


def _new_cookie_value() -> str:
    return secrets.token_hex(8)


def hash_key(
    policies: tuple[HashPolicy, ...],
    *,
    header: Callable[[str], str | None],
    cookie: Callable[[str], str | None],
    query: Callable[[str], str | None],
    source_ip: str | None,
    new_cookie_value: Callable[[], str] = _new_cookie_value,
) -> tuple[int | None, CookieToSet | None]:
    """The request's hash (None when no policy produced one) and the cookie to
    set, with Envoy's semantics: policies are evaluated in order; each one that
    yields a value is combined into the hash as `rotl(hash, 1) ^ new`; a
    `terminal` policy stops the evaluation once a hash exists. A cookie policy
    with a ttl whose cookie is absent generates a value (random, so each
    client session gets its own endpoint) and asks for it to be set."""
    result: int | None = None
    to_set: CookieToSet | None = None
    for policy in policies:
        value: str | None
        kind = policy.kind
        if kind is HashPolicyKind.HEADER:
            value = header(policy.name)
        elif kind is HashPolicyKind.COOKIE:
            value = cookie(policy.name)
            if value is None and policy.cookie_ttl is not None:
                value = new_cookie_value()
                to_set = CookieToSet(policy.name, value, policy.cookie_path, policy.cookie_ttl)
        elif kind is HashPolicyKind.QUERY_PARAMETER:
            value = query(policy.name)
        else:
            value = source_ip
        if value is not None:
            new = hash64(value)
            result = new if result is None else (((result << 1) | (result >> 63)) & _MASK64) ^ new
        if policy.terminal and result is not None:
            break
    return result, to_set
