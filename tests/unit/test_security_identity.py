"""IdentityManager against the real CA service on 127.0.0.1: what it sends
(never a private key), what it keeps (0600 files), how it renews (injected
clock: two renewals, no gap) and how a new root reaches it."""

from __future__ import annotations

import asyncio
import logging
import random
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from identity_support import as_certificates
from mesh_control_plane.ca import (
    CaSettings,
    CertificateAuthority,
    CertificateService,
    TokenAuthority,
)

from proxyless_mesh import ca_wire
from proxyless_mesh.errors import IdentityConfigError, IdentityError, TokenRejectedError
from proxyless_mesh.security import (
    CaClient,
    Certificate,
    Credentials,
    IdentityConfig,
    IdentityManager,
    SpiffeId,
    WorkloadKey,
    load_private_key,
)

ALICE = SpiffeId("cluster.local", "shop", "alice")
HOUR = 3600.0


@dataclass
class CapturingCa:
    """The real certificate service behind a server that records every request
    exactly as it arrived: raw protobuf bytes and call metadata."""

    authority: CertificateAuthority
    tokens: TokenAuthority
    address: str = ""
    raw: list[bytes] = field(default_factory=list)
    metadata: list[tuple[tuple[str, str | bytes], ...]] = field(default_factory=list)


@pytest.fixture
async def ca(tmp_path: Path) -> AsyncIterator[CapturingCa]:
    settings = CaSettings(tmp_path / "ca", leaf_ttl=HOUR)
    state = CapturingCa(CertificateAuthority.open(settings), TokenAuthority.open(settings.ca_dir))
    service = CertificateService(state.authority, state.tokens)
    inner = service.handler().service(_details("CreateCertificate"))
    assert inner is not None and inner.unary_unary is not None

    def deserialize(data: bytes) -> Any:
        state.raw.append(data)
        return ca_wire.CertificateRequest.FromString(data)

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        state.metadata.append(tuple(context.invocation_metadata() or ()))
        return await inner.unary_unary(request, context)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                ca_wire.SERVICE_NAME,
                {
                    "CreateCertificate": grpc.unary_unary_rpc_method_handler(
                        handle,
                        request_deserializer=deserialize,
                        response_serializer=lambda m: m.SerializeToString(),
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    state.address = f"127.0.0.1:{port}"
    try:
        yield state
    finally:
        await server.stop(0)


def _details(method: str) -> grpc.HandlerCallDetails:
    class Details(grpc.HandlerCallDetails):  # type: ignore[misc]
        def __init__(self) -> None:
            self.method = f"/{ca_wire.SERVICE_NAME}/{method}"
            self.invocation_metadata = ()

    return Details()


class FakeTime:
    """A clock and a sleep that advances it; after `limit` sleeps it parks, so
    the renewal loop stops at a known point until the manager is closed."""

    def __init__(self, now: float, limit: int) -> None:
        self.now, self.limit = now, limit
        self.sleeps: list[float] = []
        self.parked = asyncio.Event()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if len(self.sleeps) == self.limit:
            self.parked.set()
            await asyncio.Event().wait()  # until cancelled by close()
        self.sleeps.append(seconds)
        self.now += seconds


def _manager(ca: CapturingCa, tmp_path: Path | None = None, **kw: Any) -> IdentityManager:
    config = IdentityConfig(
        ca.address,
        ALICE,
        token=ca.tokens.mint(ALICE, HOUR),
        credentials_dir=tmp_path / "creds" if tmp_path else None,
    )
    return IdentityManager(config, **kw)


def _secrets_of(workload_key: WorkloadKey) -> list[bytes]:
    """Every form the private key could leak in."""
    key = serialization.load_pem_private_key(workload_key.private_key_pem(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return [pem, der, scalar, pem.split(b"\n")[1]]


def _certificates(path: Path) -> list[Certificate]:
    """Each PEM certificate in the file at `path`."""
    end = "-----END CERTIFICATE-----"
    blocks = path.read_text().split(end)[:-1]
    return [Certificate.from_pem(block + end) for block in blocks]


async def test_the_private_key_never_leaves(
    ca: CapturingCa, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    manager = _manager(ca)
    keys = [(await manager.start()).key]
    keys.append((await manager.renew()).key)  # renewal: the old key signs, the new is in the CSR
    await manager.close()
    assert len(ca.raw) == 2 and keys[0] is not keys[1]
    sent = b"".join(ca.raw) + b"".join(
        v if isinstance(v, bytes) else v.encode() for md in ca.metadata for _, v in md
    )
    for key in keys:
        for secret in _secrets_of(key):
            assert secret not in sent
        for secret in _secrets_of(key)[:1]:
            assert secret.decode() not in caplog.text
    assert b"PRIVATE KEY" not in sent and "PRIVATE KEY" not in caplog.text
    assert manager.config.token and manager.config.token not in caplog.text
    assert manager.config.token not in repr(manager.config)
    # What was sent is a CSR for our identity and our public key, nothing else.
    request = ca_wire.CertificateRequest.FromString(ca.raw[0])
    csr = x509.load_pem_x509_csr(request.csr.encode())
    assert (
        csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == keys[0].public_key_der()
    )
    assert [f.name for f, _ in request.ListFields()] == ["csr"]


async def test_credential_files_are_0600_and_match(ca: CapturingCa, tmp_path: Path) -> None:
    manager = _manager(ca, tmp_path)
    creds = await manager.start()
    await manager.close()
    directory = tmp_path / "creds"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = {p.name: p for p in directory.iterdir()}
    # No temp files left; the lock file serializes processes sharing the directory.
    assert set(files) == {"cert-chain.pem", "key.pem", "root-cert.pem", ".write.lock"}
    for path in files.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_private_key(files["key.pem"].read_bytes())
    assert key.public_key_der() == creds.key.public_key_der()
    assert _certificates(files["cert-chain.pem"]) == list(creds.chain)
    assert _certificates(files["root-cert.pem"]) == list(creds.roots)
    config = manager.certificate_providers()["default"]["config"]
    assert config["private_key_file"] == str(files["key.pem"])
    assert manager.certificate_providers()["default"]["plugin_name"] == "file_watcher"


async def test_renews_at_half_life_twice_without_a_gap(ca: CapturingCa) -> None:
    fake = FakeTime(now=(await _now()), limit=2)
    rotations: list[Credentials] = []
    manager = _manager(ca, clock=fake.clock, sleep=fake.sleep, rng=random.Random(7))
    manager.add_listener(rotations.append)
    first = await manager.start()
    await asyncio.wait_for(fake.parked.wait(), 10)
    await manager.close()

    assert len(rotations) == 3 and rotations[0] is first
    for before, after, slept in zip(rotations[:-1], rotations[1:], fake.sleeps, strict=True):
        lifetime = before.expires_at - before.fetched_at
        assert 0.4 * lifetime <= slept <= 0.5 * lifetime  # half life, jittered earlier
        assert after.fetched_at < before.expires_at  # renewed while still valid: no gap
        assert after.key is not before.key
        assert after.leaf.spiffe_id == ALICE.uri
    assert fake.sleeps[0] != fake.sleeps[1]  # jitter
    # Renewals authenticated with the certificate, not the token.
    assert [dict(md).get("authorization") is None for md in ca.metadata] == [False, True, True]


async def test_failed_renewal_keeps_the_certificate_and_retries(ca: CapturingCa) -> None:
    fake = FakeTime(now=(await _now()), limit=3)
    client = CaClient(ca.address)
    manager = _manager(ca, client=client, clock=fake.clock, sleep=fake.sleep)
    first = await manager.start()
    client.address = "127.0.0.1:1"  # the CA is gone: nothing listens there
    await client.close()  # (after: a renewal while closing must not reach the CA)
    await asyncio.wait_for(fake.parked.wait(), 10)
    await manager.close()
    assert manager.credentials is first
    assert fake.sleeps[1:] == [2.0, 4.0]  # backoff after each failure


async def test_a_new_root_is_picked_up_at_renewal(ca: CapturingCa, tmp_path: Path) -> None:
    manager = _manager(ca, tmp_path)
    seen: list[Credentials] = []
    manager.add_listener(seen.append)
    before = await manager.start()
    (old_root,) = before.roots
    new_root = ca.authority.rotate_root(propagation=0).cert
    after = await manager.renew()
    await manager.close()
    (new,) = as_certificates([new_root])
    assert set(after.roots) == {old_root, new}
    assert x509.load_der_x509_certificate(after.leaf.der).issuer == new_root.subject
    assert seen[-1] is after and manager.credentials is after
    assert set(_certificates(tmp_path / "creds/root-cert.pem")) == {old_root, new}
    assert manager.client_ssl_context() is after.client_ssl_context()
    assert manager.client_ssl_context() is not before.client_ssl_context()


async def test_start_without_a_token_or_with_a_bad_one(ca: CapturingCa) -> None:
    no_token = IdentityManager(IdentityConfig(ca.address, ALICE))
    with pytest.raises(IdentityConfigError, match="PROXYLESS_MESH_TOKEN"):
        await no_token.start()
    bob = SpiffeId("cluster.local", "shop", "bob")
    wrong = IdentityManager(IdentityConfig(ca.address, ALICE, token=ca.tokens.mint(bob, 60)))
    with pytest.raises(TokenRejectedError) as info:
        await wrong.start()
    assert info.value.code == "PERMISSION_DENIED"
    await wrong.close()
    with pytest.raises(IdentityError, match="not started"):
        _ = wrong.credentials


async def _now() -> float:
    return time.time()
