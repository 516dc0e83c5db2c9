"""The certificate service over a real gRPC server on 127.0.0.1: who gets
which certificate, and every refusal with its own status, reason and log line
(never the token)."""

from __future__ import annotations

import base64
import json
import logging
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from identity_support import as_certificates
from mesh_control_plane.ca import (
    CaServer,
    CaSettings,
    CertificateAuthority,
    CertificateService,
    TokenAuthority,
    TokenError,
)
from mesh_control_plane.cli.main import main as meshctl

from proxyless_mesh import ca_wire
from proxyless_mesh.errors import TokenRejectedError
from proxyless_mesh.security import (
    CaClient,
    Certificate,
    Credentials,
    SpiffeId,
    make_csr,
    new_private_key,
)

ALICE = SpiffeId("cluster.local", "shop", "alice")
BOB = SpiffeId("cluster.local", "shop", "bob")


@dataclass
class Ca:
    authority: CertificateAuthority
    tokens: TokenAuthority
    client: CaClient


@pytest.fixture
async def ca(tmp_path: Path) -> AsyncIterator[Ca]:
    settings = CaSettings(tmp_path / "ca", leaf_ttl=3600)
    authority = CertificateAuthority.open(settings)
    tokens = TokenAuthority.open(settings.ca_dir)
    server = CaServer(CertificateService(authority, tokens))
    port = await server.start("127.0.0.1:0")
    client = CaClient(f"127.0.0.1:{port}")
    try:
        yield Ca(authority, tokens, client)
    finally:
        await client.close()
        await server.stop(0)


async def _get(ca: Ca, identity: SpiffeId, token: str) -> Credentials:
    key = new_private_key()
    signed = await ca.client.create_certificate(make_csr(key, identity), 0, token=token)
    chain = tuple(Certificate.from_pem(p) for p in signed.cert_chain)
    return Credentials(key, chain[:-1], chain[-1:], fetched_at=0.0)


async def test_token_gets_its_identity_leaf_first_root_last(ca: Ca) -> None:
    key = new_private_key()
    signed = await ca.client.create_certificate(
        make_csr(key, ALICE), 60, token=ca.tokens.mint(ALICE, 600)
    )
    leaf, root = (Certificate.from_pem(p) for p in signed.cert_chain)
    assert leaf.spiffe_id == ALICE.uri
    assert leaf.public_key_der == key.public_key_der()
    assert root == as_certificates(ca.authority.trust_bundle())[0]
    assert [Certificate.from_pem(p) for p in signed.trust_bundle] == [root]
    lifetime = leaf.not_after - leaf.not_before
    assert 60 <= lifetime <= 60 + 31  # requested 60 s, back-dated for skew


async def _refused(ca: Ca, csr: str, **auth: object) -> TokenRejectedError:
    with pytest.raises(TokenRejectedError) as info:
        await ca.client.create_certificate(csr, 0, **auth)  # type: ignore[arg-type]
    return info.value


async def test_refuses_a_csr_for_another_identity(ca: Ca, caplog: pytest.LogCaptureFixture) -> None:
    token = ca.tokens.mint(ALICE, 600)
    caplog.set_level(logging.INFO, "mesh_control_plane.ca")
    err = await _refused(ca, make_csr(new_private_key(), BOB), token=token)
    assert err.code == "PERMISSION_DENIED"
    assert err.reason == (f"the CSR asks for {BOB} but the join token grants {ALICE} only")
    assert "refused a certificate request" in caplog.text and str(BOB) in caplog.text
    assert token not in caplog.text and token.split(".")[2] not in caplog.text


async def test_refuses_an_expired_token(ca: Ca, caplog: pytest.LogCaptureFixture) -> None:
    token = ca.tokens.mint(ALICE, 60, now=1_000_000)
    err = await _refused(ca, make_csr(new_private_key(), ALICE), token=token)
    assert err.code == "UNAUTHENTICATED"
    assert err.reason == "the join token expired at 1970-01-12T13:47:40Z; mint a new one"
    assert "expired" in caplog.text and token not in caplog.text


async def test_refuses_a_forged_token(ca: Ca, tmp_path: Path) -> None:
    forged = TokenAuthority.open(tmp_path / "elsewhere").mint(ALICE, 600)
    err = await _refused(ca, make_csr(new_private_key(), ALICE), token=forged)
    assert err.code == "UNAUTHENTICATED"
    assert "signature is invalid" in err.reason
    # Re-signed claims for another identity: same verdict.
    header, _, sig = ca.tokens.mint(ALICE, 600).split(".")
    body = base64.urlsafe_b64encode(
        json.dumps({"aud": "proxyless-mesh-ca", "sub": BOB.uri, "exp": 4e9}).encode()
    )
    tampered = f"{header}.{body.decode().rstrip('=')}.{sig}"
    err = await _refused(ca, make_csr(new_private_key(), BOB), token=tampered)
    assert "signature is invalid" in err.reason


async def test_refuses_a_request_without_a_token(ca: Ca) -> None:
    async with grpc.aio.insecure_channel(ca.client.address) as channel:
        call = channel.unary_unary(
            ca_wire.CREATE_CERTIFICATE,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=ca_wire.CertificateResponse.FromString,
        )
        request = ca_wire.CertificateRequest(csr=make_csr(new_private_key(), ALICE))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        details = info.value.details() or ""
        assert details.startswith("no credentials: send 'authorization: Bearer")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(request, metadata=(("authorization", "Basic abc"),), timeout=5)
        assert "must be 'Bearer <join token>'" in (info.value.details() or "")


async def test_renewal_with_the_current_certificate(ca: Ca, tmp_path: Path) -> None:
    current = await _get(ca, ALICE, ca.tokens.mint(ALICE, 600))
    key = new_private_key()
    signed = await ca.client.create_certificate(make_csr(key, ALICE), 0, renewal=current)
    leaf = Certificate.from_pem(signed.cert_chain[0])
    assert leaf.spiffe_id == ALICE.uri and leaf.public_key_der == key.public_key_der()

    # The current certificate grants its own identity only.
    err = await _refused(ca, make_csr(new_private_key(), BOB), renewal=current)
    assert err.code == "PERMISSION_DENIED" and "current certificate grants" in err.reason


async def test_renewal_refused_for_a_foreign_chain_or_a_proof_by_another_key(
    ca: Ca, tmp_path: Path
) -> None:
    other_authority = CertificateAuthority.open(CaSettings(tmp_path / "other"))
    key = new_private_key()
    chain = other_authority.sign(
        x509.load_pem_x509_csr(make_csr(key, ALICE).encode()), ALICE.uri, 600
    )
    foreign = Credentials(
        key, as_certificates(chain[:1]), as_certificates(chain[1:]), fetched_at=0.0
    )
    err = await _refused(ca, make_csr(new_private_key(), ALICE), renewal=foreign)
    assert err.code == "UNAUTHENTICATED" and "does not verify" in err.reason

    # Our CA's chain, but the proof signed by a key that is not the chain's.
    current = await _get(ca, ALICE, ca.tokens.mint(ALICE, 600))
    stolen = Credentials(new_private_key(), current.chain, current.roots, fetched_at=0.0)
    err = await _refused(ca, make_csr(new_private_key(), ALICE), renewal=stolen)
    assert err.code == "UNAUTHENTICATED" and "renewal proof invalid" in err.reason


def test_token_verification_rejects_alg_tricks(tmp_path: Path) -> None:
    tokens = TokenAuthority.open(tmp_path)
    good = tokens.mint(ALICE, 600)
    assert tokens.verify(good) == ALICE
    _, body, _ = good.split(".")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("=")
    for bad, reason in [
        ("abc", "malformed"),
        (f"{none_header}.{body}.", "not signed with ES256"),
        ("!!.!!.!!", "malformed"),
    ]:
        with pytest.raises(TokenError, match=reason):
            tokens.verify(bad)


def test_meshctl_token_create(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config"
    config.mkdir()
    argv = ["token", "create", "--namespace", "shop", "--service-account", "alice"]
    assert meshctl([*argv, "--ttl", "30m", "--config-dir", str(config)]) == 0
    token = capsys.readouterr().out.strip()
    ca_dir = tmp_path / "mesh-ca"  # beside the config dir, as the control plane's default
    key_file = ca_dir / "token-signing-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert TokenAuthority.open(ca_dir).verify(token) == ALICE
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["exp"] - claims["iat"] == 1800
    assert meshctl([*argv, "--ca-dir", str(ca_dir)]) == 0
    assert TokenAuthority.open(ca_dir).verify(capsys.readouterr().out.strip()) == ALICE
