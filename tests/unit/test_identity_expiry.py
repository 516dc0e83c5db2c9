"""The expiry-risk state machine of IdentityManager, on an injected clock: a
CA that goes away at the first renewal takes the certificate through ok ->
at_risk -> expired, each change logged once and on time (not per retry);
the gauge and the failure counter follow; outbound fails closed at expiry
with a typed error; and the CA's return brings it all back to ok by itself.

The CA is the real CertificateAuthority (same clock), called in-process
through a client double that can be switched off: no sockets, no waiting."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from mesh_control_plane.ca import CaSettings, CertificateAuthority
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.errors import (
    CertificateAuthorityUnavailableError,
    IdentityError,
    WorkloadCertificateExpiredError,
)
from proxyless_mesh.security import (
    CaClient,
    Credentials,
    IdentityConfig,
    IdentityManager,
    IdentityState,
    MeshHealth,
    SignedChain,
    SpiffeId,
)
from proxyless_mesh.security._expiry import AT_RISK_FRACTION, CRITICAL_FRACTION, REMIND_EVERY
from proxyless_mesh.security._identity import EXPIRED_RETRY_DELAY
from proxyless_mesh.telemetry._metrics import CERT_EXPIRY_GAUGE, CERT_RENEWAL_FAILURES

ALICE = SpiffeId("cluster.local", "shop", "alice")
HOUR = 3600.0
LOGGER = "proxyless_mesh.security"


class SteppedTime:
    """A clock, and a sleep that advances it but only `limit` times: then it
    parks until `run(n)` allows n more, so the test steps the renewal loop."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self.limit = 0
        self.parked = asyncio.Event()
        self._gate = asyncio.Event()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        while len(self.sleeps) >= self.limit:
            self._gate = asyncio.Event()
            self.parked.set()
            await self._gate.wait()
        self.sleeps.append(seconds)
        self.now += seconds

    async def run(self, steps: int = 1) -> None:
        """Let the loop sleep `steps` more times (and act after each), then
        wait until it parks again."""
        self.limit += steps
        self.parked.clear()
        self._gate.set()
        await asyncio.wait_for(self.parked.wait(), 10)


@dataclass
class SwitchableCa:
    """The real CA's signing, behind a switch: down, it fails as the gRPC
    client does when nothing answers."""

    authority: CertificateAuthority
    up: bool = True
    calls: list[str] = field(default_factory=list)  # "token" / "renewal" / "down"

    async def create_certificate(
        self,
        csr_pem: str,
        validity_seconds: int = 0,
        *,
        token: str | None = None,
        renewal: Credentials | None = None,
    ) -> SignedChain:
        if not self.up:
            self.calls.append("down")
            raise CertificateAuthorityUnavailableError("the CA at test: UNAVAILABLE")
        self.calls.append("token" if token is not None else "renewal")
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        chain = self.authority.sign(csr, ALICE.uri, HOUR)
        pem = tuple(c.public_bytes(Encoding.PEM).decode() for c in chain)
        return SignedChain(pem, pem[-1:])

    async def close(self) -> None:
        pass


@dataclass
class Rig:
    time: SteppedTime
    ca: SwitchableCa
    manager: IdentityManager
    reader: InMemoryMetricReader


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    # Whole seconds: certificate times have no fractions, so expires_at is exact.
    fake = SteppedTime(float(int(time.time())))
    authority = CertificateAuthority.open(
        CaSettings(tmp_path / "ca", leaf_ttl=HOUR), clock=fake.clock
    )
    ca = SwitchableCa(authority)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    manager = IdentityManager(
        IdentityConfig("test", ALICE, token="join-token"),
        client=cast(CaClient, ca),
        clock=fake.clock,
        sleep=fake.sleep,
        meter=provider.get_meter("test"),
    )
    await manager.start()
    await asyncio.wait_for(fake.parked.wait(), 10)  # the loop waits for half life
    try:
        yield Rig(fake, ca, manager, reader)
    finally:
        await manager.close()
        provider.shutdown()


def _metric(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    points: list[Any] = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    points.extend(metric.data.data_points)
    return points


def _loud(records: Sequence[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if r.name == LOGGER and r.levelno >= logging.WARNING]


async def test_states_follow_the_clock_and_each_change_is_logged_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    manager, fake = rig.manager, rig.time
    expires_at = manager.credentials.expires_at
    lifetime = expires_at - manager.credentials.fetched_at
    assert lifetime == HOUR

    def at(remaining: float) -> IdentityState:
        fake.now = expires_at - remaining
        return manager.status().state

    assert at(lifetime * 0.5) is IdentityState.OK
    assert at(lifetime * AT_RISK_FRACTION + 1) is IdentityState.OK
    assert _loud(caplog.records) == []
    # Every reading past a threshold says the same, but only the first logs.
    assert [at(lifetime * AT_RISK_FRACTION - 1) for _ in range(3)] == [IdentityState.AT_RISK] * 3
    assert [r.levelname for r in _loud(caplog.records)] == ["WARNING"]
    assert [at(lifetime * CRITICAL_FRACTION - 1) for _ in range(3)] == [IdentityState.AT_RISK] * 3
    assert [r.levelname for r in _loud(caplog.records)] == ["WARNING", "ERROR"]
    assert "critically at risk" in _loud(caplog.records)[1].getMessage()
    assert manager.valid_credentials() is manager.credentials  # still valid: still used
    assert [at(0.0), at(-5.0)] == [IdentityState.EXPIRED] * 2
    loud = _loud(caplog.records)
    assert [r.levelname for r in loud] == ["WARNING", "ERROR", "ERROR"]
    assert "EXPIRED" in loud[2].getMessage() and ALICE.uri in loud[2].getMessage()
    status = manager.status()
    assert status.expires_in == -5.0
    with pytest.raises(WorkloadCertificateExpiredError) as caught:
        manager.valid_credentials()
    assert caught.value.expired_at == expires_at and caught.value.spiffe_id == ALICE.uri
    assert isinstance(caught.value, IdentityError) and isinstance(
        caught.value, httpx.TransportError
    )
    assert "expired at" in str(caught.value)
    # A renewal (the CA is up) brings it back; expired, it authenticates with the token.
    await manager.renew()
    assert rig.ca.calls[-1] == "token"
    assert manager.status().state is IdentityState.OK
    assert manager.valid_credentials() is manager.credentials
    assert "renewed" in _loud(caplog.records)[-1].getMessage()


async def test_a_ca_outage_takes_the_loop_to_expiry_and_back(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    manager, fake, ca = rig.manager, rig.time, rig.ca
    first = manager.credentials
    expires_at, lifetime = first.expires_at, first.expires_at - first.fetched_at
    ca.up = False
    seen: list[tuple[IdentityState, float]] = []  # (state, seconds left) after each wake
    while fake.now < expires_at + 60:
        await fake.run()
        status = manager.status()
        seen.append((status.state, expires_at - fake.now))
        assert status.renewal_failures == ca.calls.count("down")
        assert status.last_renewal_error == "the CA at test: UNAVAILABLE"
        assert len(seen) < 500
    assert manager.credentials is first  # nothing else to use

    # Each state is first seen right past its threshold (the loop wakes for it).
    first_at = {state: left for state, left in reversed(seen)}
    assert lifetime * AT_RISK_FRACTION - 0.02 <= first_at[IdentityState.AT_RISK]
    assert first_at[IdentityState.AT_RISK] < lifetime * AT_RISK_FRACTION
    assert -0.02 <= first_at[IdentityState.EXPIRED] <= 0
    assert [s for s, _ in seen] == sorted((s for s, _ in seen), key=_rank)
    # Once expired, retries stay frequent: expiry is when recovery matters most.
    failing = fake.sleeps[1:]
    assert max(failing) <= 30.0
    assert all(
        s <= EXPIRED_RETRY_DELAY
        for s, (state, _) in zip(failing, seen, strict=False)
        if state is IdentityState.EXPIRED
    )

    # Loud but not spammy: one line per change plus one reminder per
    # REMIND_EVERY, although there were many more attempts.
    attempts = ca.calls.count("down")
    loud = _loud(caplog.records)
    outage = fake.now - (first.fetched_at + fake.sleeps[0])
    assert attempts > 40
    assert len(loud) <= 4 + outage / REMIND_EVERY + 1
    messages = [r.getMessage() for r in loud]
    assert sum(" at risk" in m and "critically" not in m for m in messages) == 1
    assert sum("critically at risk" in m for m in messages) == 1
    assert sum("EXPIRED" in m for m in messages) == 1
    assert all(r.levelname == "ERROR" for r in loud[-2:])  # reminders past expiry are errors

    # The gauge reads the clock at collection; the counter counts every failure.
    (gauge,) = _metric(rig.reader, CERT_EXPIRY_GAUGE)
    assert gauge.value == pytest.approx(expires_at - fake.now)
    assert gauge.value < 0
    assert dict(gauge.attributes) == {"spiffe_id": ALICE.uri}
    (failures,) = _metric(rig.reader, CERT_RENEWAL_FAILURES)
    assert failures.value == attempts

    # The CA comes back: the next retry renews (with the token) and all is ok.
    ca.up = True
    await fake.run()
    assert manager.credentials is not first and ca.calls[-1] == "token"
    status = manager.status()
    assert (status.state, status.last_renewal_error, status.renewal_failures) == (
        IdentityState.OK,
        None,
        0,
    )
    assert "renewed after" in _loud(caplog.records)[-1].getMessage()
    (gauge,) = _metric(rig.reader, CERT_EXPIRY_GAUGE)
    assert gauge.value == pytest.approx(HOUR, abs=1.0)  # notAfter has whole seconds
    # The loop went back to renewing at half life, not retrying.
    assert 0.4 * HOUR <= manager.renewal_delay(manager.credentials) + 1 <= 0.5 * HOUR + 1


async def test_one_failed_renewal_is_a_warning_not_a_risk(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    rig.ca.up = False
    await rig.time.run()  # the half-life renewal fails
    assert rig.manager.status().state is IdentityState.OK
    assert [r.levelname for r in _loud(caplog.records)] == ["WARNING"]
    await rig.time.run(3)  # three quick retries: logged at DEBUG only
    assert len(_loud(caplog.records)) == 1
    rig.ca.up = True
    await rig.time.run()
    assert rig.manager.status().renewal_failures == 0
    assert rig.ca.calls[-1] == "renewal"  # still valid: the certificate authenticates
    assert len(_loud(caplog.records)) == 1  # success after a blip is INFO


async def test_closed_identity_reports_no_gauge(rig: Rig) -> None:
    assert len(_metric(rig.reader, CERT_EXPIRY_GAUGE)) == 1
    await rig.manager.close()
    assert _metric(rig.reader, CERT_EXPIRY_GAUGE) == []


def test_mesh_health_serving_is_false_only_when_expired() -> None:
    assert MeshHealth(IdentityState.OK).serving
    assert MeshHealth(IdentityState.AT_RISK, 10.0).serving
    assert MeshHealth(IdentityState.DISABLED).serving
    assert not MeshHealth(IdentityState.EXPIRED, -1.0).serving
    assert MeshHealth(IdentityState.AT_RISK).identity == "at_risk"


def test_a_mesh_without_identity_reports_disabled() -> None:
    bootstrap = Bootstrap.from_json(
        '{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}]}]}'
    )
    health = Mesh(bootstrap).health()  # not started, no CA: nothing to report on
    assert health == MeshHealth(IdentityState.DISABLED, xds_connected=False)
    assert health.serving and health.expires_in is None


def _rank(state: IdentityState) -> int:
    return [IdentityState.OK, IdentityState.AT_RISK, IdentityState.EXPIRED].index(state)
