"""The mTLS transport registry: one transport per (expected IDs, SNI), found
again for the same cluster TLS object without rebuilding its key, and never
handed out after drain()."""

from __future__ import annotations

from typing import Any

from proxyless_mesh.integrations._tls_transport import _Registry
from proxyless_mesh.model import UpstreamTls


class _Made:
    def __init__(self, expected: frozenset[str], sni: str) -> None:
        self.expected = expected
        self.sni = sni


def registry() -> tuple[_Registry, list[_Made]]:
    made: list[_Made] = []

    def factory(credentials: Any, expected: frozenset[str], *, sni: str, **_: Any) -> _Made:
        made.append(_Made(expected, sni))
        return made[-1]

    return _Registry(credentials=object(), factory=factory), made  # type: ignore[arg-type]


def test_one_transport_per_identity_set_whatever_the_tls_object() -> None:
    reg, made = registry()
    a = UpstreamTls(("spiffe://t/ns/a/sa/x", "spiffe://t/ns/a/sa/y"), "a.mesh")
    first = reg.get(a)
    assert reg.get(a) is first  # the same object: the remembered answer
    same_set = UpstreamTls(("spiffe://t/ns/a/sa/y", "spiffe://t/ns/a/sa/x"), "a.mesh")
    assert reg.get(same_set) is first  # an equal set, another object (a new CDS)
    other = reg.get(UpstreamTls(("spiffe://t/ns/b/sa/z",), "b.mesh"))
    assert other is not first
    assert reg.get(a) is first  # back to the first after another cluster
    assert [(m.expected, m.sni) for m in made] == [
        (frozenset({"spiffe://t/ns/a/sa/x", "spiffe://t/ns/a/sa/y"}), "a.mesh"),
        (frozenset({"spiffe://t/ns/b/sa/z"}), "b.mesh"),
    ]


def test_drained_transports_are_not_handed_out_again() -> None:
    reg, made = registry()
    tls = UpstreamTls(("spiffe://t/ns/a/sa/x",), "")
    first = reg.get(tls)
    assert reg.drain() == [first]
    assert reg.get(tls) is not first
    assert len(made) == 2


def test_no_tls_or_no_identity_means_plaintext() -> None:
    reg, made = registry()
    assert reg.get(None) is None
    plain = _Registry(credentials=None, factory=lambda *a, **k: object())
    assert plain.get(UpstreamTls(("spiffe://t/ns/a/sa/x",))) is None
    assert made == []
