"""The first certificate when the CA is not there (issue 17): asked again with
jittered, capped backoff until the timeout (one WARNING, one INFO, not one per
retry); a refusal ends it at once; a still-valid cached certificate of this
identity starts at once and is replaced as soon as the CA answers; an expired
one, or one of another identity, is never used.

The CA is the real CertificateAuthority, called in-process through a client
double that can be switched off; sleeps are recorded, not slept."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from mesh_control_plane.ca import CaSettings, CertificateAuthority

from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.errors import CertificateAuthorityUnavailableError, TokenRejectedError
from proxyless_mesh.security import (
    CaClient,
    CertificateCache,
    Credentials,
    IdentityConfig,
    IdentityManager,
    SignedChain,
    SpiffeId,
)
from proxyless_mesh.security._identity import START_RETRY_CAP

ALICE = SpiffeId("cluster.local", "shop", "alice")
BOB = SpiffeId("cluster.local", "shop", "bob")
HOUR = 3600.0
LOGGER = "proxyless_mesh.security"


@dataclass
class FlakyCa:
    """The real CA's signing; `down` calls fail as an unreachable CA does,
    `refuse` as a CA that rejects the token."""

    authority: CertificateAuthority
    down: int = 0
    refuse: bool = False
    calls: list[str] = field(default_factory=list)

    async def create_certificate(
        self,
        csr_pem: str,
        validity_seconds: int = 0,
        *,
        token: str | None = None,
        renewal: Credentials | None = None,
    ) -> SignedChain:
        if self.refuse:
            raise TokenRejectedError("refused", code="UNAUTHENTICATED", reason="bad token")
        if self.down:
            self.down -= 1
            self.calls.append("down")
            raise CertificateAuthorityUnavailableError("the CA at test failed: UNAVAILABLE")
        self.calls.append("token" if token is not None else "renewal")
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        uri = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        (spiffe,) = uri.get_values_for_type(x509.UniformResourceIdentifier)
        pem = tuple(
            c.public_bytes(Encoding.PEM).decode() for c in self.authority.sign(csr, spiffe, HOUR)
        )
        return SignedChain(pem, pem[-1:])

    async def close(self) -> None:
        pass


class Sleeps:
    """Records each delay, advances the clock, yields to the loop."""

    def __init__(self) -> None:
        self.now = time.time()
        self.delays: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[CertificateAuthority]:
    yield CertificateAuthority.open(CaSettings(tmp_path / "ca", leaf_ttl=HOUR))


def _manager(
    ca: FlakyCa,
    sleeps: Sleeps,
    cache: CertificateCache | None = None,
    identity: SpiffeId = ALICE,
) -> IdentityManager:
    return IdentityManager(
        IdentityConfig("test", identity, token="join-token"),
        client=cast(CaClient, ca),
        clock=sleeps.clock,
        sleep=sleeps.sleep,
        cache=cache,
    )


def _loud(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == LOGGER and r.levelno >= logging.INFO and "valid until" not in r.getMessage()
    ]


async def test_the_first_certificate_is_asked_again_with_capped_jittered_backoff(
    authority: CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    ca, sleeps = FlakyCa(authority, down=8), Sleeps()
    manager = _manager(ca, sleeps)
    caplog.set_level(logging.INFO, LOGGER)
    try:
        credentials = await manager.start_within(30)
    finally:
        await manager.close()
    assert credentials.spiffe_id == ALICE.uri
    assert ca.calls == ["down"] * 8 + ["token"]
    # Doubling ceilings 0.1, 0.2, ... capped at START_RETRY_CAP; each delay
    # between half its ceiling and the ceiling (jitter).
    ceilings = [min(START_RETRY_CAP, 0.1 * 2**i) for i in range(8)]
    assert len(sleeps.delays) == 8
    for delay, ceiling in zip(sleeps.delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert max(sleeps.delays) <= START_RETRY_CAP
    # Eight failures: one WARNING, one INFO when the CA answered.
    lines = _loud(caplog)
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO], lines
    assert "asking again" in lines[0][1] and "after 8 failed attempt(s)" in lines[1][1]


async def test_no_answer_within_the_timeout_is_the_typed_error(
    authority: CertificateAuthority,
) -> None:
    ca = FlakyCa(authority, down=10**6)
    manager = IdentityManager(
        IdentityConfig("test", ALICE, token="join-token"), client=cast(CaClient, ca)
    )
    started = time.monotonic()
    with pytest.raises(CertificateAuthorityUnavailableError) as caught:
        await manager.start_within(0.5)
    assert 0.5 <= time.monotonic() - started < 2.0
    assert "within 0.5s" in str(caught.value) and "UNAVAILABLE" in str(caught.value)
    assert len(ca.calls) >= 2  # asked again within the timeout, not once


async def test_a_refusal_ends_the_start_at_once(authority: CertificateAuthority) -> None:
    ca, sleeps = FlakyCa(authority, refuse=True), Sleeps()
    with pytest.raises(TokenRejectedError):
        await _manager(ca, sleeps).start_within(30)
    assert sleeps.delays == []


async def test_a_cached_certificate_starts_at_once_and_is_replaced_when_the_ca_answers(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    cache = CertificateCache(tmp_path / "cache" / "xds-x.identity")
    sleeps = Sleeps()
    first = _manager(FlakyCa(authority), sleeps, cache)
    issued = await first.start_within(5)
    await first.close()
    assert stat.S_IMODE(cache.path.stat().st_mode) == 0o600
    assert json.loads(cache.path.read_text())["spiffe_id"] == ALICE.uri

    ca = FlakyCa(authority, down=3)  # the CA is down at the restart
    second = _manager(ca, sleeps, cache)
    try:
        started = await second.start_within(5)
        assert started.leaf == issued.leaf and ca.calls == []  # nothing waited for the CA
        for _ in range(100):  # the renewal loop asks at once, then with start backoff
            if second.credentials.leaf != issued.leaf:
                break
            await asyncio.sleep(0)
        assert ca.calls == ["down", "down", "down", "renewal"]
        retries = sleeps.delays[-4:-1]  # after the first delay (0: at once), before half life
        assert sleeps.delays[-5] == 0.0 and max(retries) <= START_RETRY_CAP
        renewed = second.credentials
        assert renewed.leaf != issued.leaf and renewed.spiffe_id == ALICE.uri
        on_disk = json.loads(cache.path.read_text())["chain"][0]
        assert on_disk == renewed.leaf.pem
    finally:
        await second.close()


async def test_an_expired_cached_certificate_is_never_used(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    cache = CertificateCache(tmp_path / "xds-x.identity")
    sleeps = Sleeps()
    first = _manager(FlakyCa(authority), sleeps, cache)
    issued = await first.start_within(5)
    await first.close()
    sleeps.now = issued.expires_at + 1  # restarted after it expired
    ca = FlakyCa(authority)
    second = _manager(ca, sleeps, cache)
    try:
        await second.start_within(5)
        assert ca.calls == ["token"] and second.credentials.leaf != issued.leaf
    finally:
        await second.close()


async def test_a_cached_certificate_of_another_identity_is_ignored(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    cache = CertificateCache(tmp_path / "xds-x.identity")
    sleeps = Sleeps()
    bob = _manager(FlakyCa(authority), sleeps, cache, identity=BOB)
    await bob.start_within(5)
    await bob.close()
    ca = FlakyCa(authority)
    alice = _manager(ca, sleeps, cache)
    try:
        assert (await alice.start_within(5)).spiffe_id == ALICE.uri
        assert ca.calls == ["token"]
    finally:
        await alice.close()


def test_the_cache_lives_beside_the_config_cache_and_can_be_turned_off(tmp_path: Path) -> None:
    doc = {
        "xds_servers": [{"server_uri": "127.0.0.1:1", "channel_creds": [{"type": "insecure"}]}],
        "node": {"id": "n"},
    }
    config = tmp_path / "xds-abc.cache"
    on = Bootstrap.from_json(json.dumps(doc))
    cache = CertificateCache.beside(config, on, None)
    assert cache is not None and cache.path == tmp_path / "xds-abc.identity"
    assert CertificateCache.beside(config, on, False) is None
    assert CertificateCache.beside(None, on, True) is None  # no config cache, no key on disk
    off = Bootstrap.from_json(json.dumps({**doc, "proxyless_mesh": {"certificate_cache": False}}))
    assert CertificateCache.beside(config, off, None) is None
