"""Scheduled root rotation on an injected clock: the successor is made when the
rotation lead is left of the root's life, only where `may_rotate` says so (the
leader), and with overlapping trust: leaves of the old root verify against the
bundle until they have expired, the new root signs one leaf lifetime later.
Impossible lifetimes (a lead shorter than two leaf lifetimes) are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from mesh_control_plane.ca import CaError, CaSettings, CertificateAuthority
from mesh_control_plane.ca.root_schedule import RootSchedule

from proxyless_mesh.security import SpiffeId, make_csr, new_private_key

ALICE = SpiffeId("cluster.local", "shop", "alice")
ROOT_TTL, LEAD, LEAF = 1000.0, 300.0, 100.0


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _csr() -> x509.CertificateSigningRequest:
    return x509.load_pem_x509_csr(make_csr(new_private_key(), ALICE).encode())


def _ca(tmp_path: Path, clock: Clock) -> CertificateAuthority:
    settings = CaSettings(tmp_path, leaf_ttl=LEAF, root_ttl=ROOT_TTL, root_rotation_lead=LEAD)
    return CertificateAuthority.open(settings, clock=clock)


def test_the_root_lives_root_ttl(tmp_path: Path) -> None:
    clock = Clock()
    root = _ca(tmp_path, clock).trust_bundle()[0]
    assert root.not_valid_after_utc.timestamp() == pytest.approx(clock.now + ROOT_TTL, abs=1)


def test_rotates_when_the_lead_is_left_and_only_where_allowed(tmp_path: Path) -> None:
    clock = Clock()
    start = clock.now
    ca = _ca(tmp_path, clock)
    leader = False
    rotated: list[str] = []
    schedule = RootSchedule(
        ca, may_rotate=lambda: leader, on_rotated=lambda: rotated.append("shared")
    )
    clock.now = start + ROOT_TTL - LEAD - 1
    assert schedule.check() is None and len(ca.roots()) == 1, "not due yet"
    clock.now = start + ROOT_TTL - LEAD
    assert schedule.check() is None and len(ca.roots()) == 1, "due, but not the leader"
    leader = True
    new = schedule.check()
    assert new is not None and rotated == ["shared"]
    assert [r.id for r in ca.roots()][-1] == new.id and len(ca.roots()) == 2
    assert schedule.check() is None, "the successor is not due"


def test_overlapping_trust_across_a_scheduled_rotation(tmp_path: Path) -> None:
    clock = Clock()
    start = clock.now
    ca = _ca(tmp_path, clock)
    old = ca.trust_bundle()[0]
    clock.now = start + ROOT_TTL - LEAD
    new = RootSchedule(ca).check()
    assert new is not None
    old_leaf = ca.sign(_csr(), ALICE.uri, LEAF)
    assert old_leaf[1] == old, "the old root signs until the new one reached everyone"
    assert ca.trust_bundle() == [old, new.cert], "both trusted at once"

    clock.now += LEAF  # one leaf lifetime: the new root signs
    new_leaf = ca.sign(_csr(), ALICE.uri, LEAF)
    assert new_leaf[1] == new.cert
    clock.now -= 1  # the old leaf's last second: it still verifies, beside new ones
    assert ca.verify_chain(old_leaf) == ALICE.uri
    clock.now += 2
    assert ca.verify_chain(new_leaf) == ALICE.uri
    clock.now += LEAF  # every old leaf has expired: the old root leaves, before it expires
    assert ca.trust_bundle() == [new.cert]
    assert clock.now < old.not_valid_after_utc.timestamp()


@pytest.mark.parametrize(
    ("root_ttl", "lead", "why"),
    [(1000.0, 150.0, "at least twice"), (1000.0, 1000.0, "shorter than the root")],
)
def test_impossible_lifetimes_are_refused(
    tmp_path: Path, root_ttl: float, lead: float, why: str
) -> None:
    settings = CaSettings(tmp_path, leaf_ttl=LEAF, root_ttl=root_ttl, root_rotation_lead=lead)
    with pytest.raises(CaError, match=why):
        CertificateAuthority.open(settings)


def test_the_default_lead_is_a_fifth_of_the_root_life(tmp_path: Path) -> None:
    assert CaSettings(tmp_path, root_ttl=1000.0 * LEAF).rotation_lead == 200.0 * LEAF
