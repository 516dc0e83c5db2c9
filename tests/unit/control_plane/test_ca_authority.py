"""The CA's roots: made once and kept (0600), reloaded, rotated in the safe
order, an operator's intermediate; leaves: the right SAN and lifetime."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from identity_support import as_certificates
from mesh_control_plane.ca import CaError, CaSettings, CertificateAuthority, parse_duration
from mesh_control_plane.ca.certs import make_root, sign_leaf

from proxyless_mesh.security import SpiffeId, make_csr, new_private_key

ALICE = SpiffeId("cluster.local", "shop", "alice")
DAY = 86400.0


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _csr(identity: SpiffeId = ALICE) -> x509.CertificateSigningRequest:
    return x509.load_pem_x509_csr(make_csr(new_private_key(), identity).encode())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_makes_a_root_kept_0600_and_reloads_it(tmp_path: Path) -> None:
    settings = CaSettings(tmp_path / "ca")
    first = CertificateAuthority.open(settings)
    assert _mode(settings.ca_dir) == 0o700
    files = sorted(settings.ca_dir.iterdir())
    assert any(f.name.endswith(".key.pem") for f in files)
    assert all(_mode(f) == 0o600 for f in files), [(f.name, oct(_mode(f))) for f in files]
    again = CertificateAuthority.open(settings)
    assert again.trust_bundle() == first.trust_bundle()
    root = first.trust_bundle()[0]
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.not_valid_after_utc - root.not_valid_before_utc >= dt.timedelta(days=3649)


def test_signs_exactly_the_spiffe_id_for_the_lifetime(tmp_path: Path) -> None:
    clock = Clock()
    ca = CertificateAuthority.open(CaSettings(tmp_path, leaf_ttl=3600), clock=clock)
    chain = ca.sign(_csr(), ALICE.uri, ca.leaf_ttl(0))
    leaf, root = chain
    assert root == ca.trust_bundle()[0]
    assert as_certificates([leaf])[0].spiffe_id == "spiffe://cluster.local/ns/shop/sa/alice"
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.critical and len(sans.value) == 1
    assert leaf.not_valid_after_utc.timestamp() == pytest.approx(clock.now + 3600, abs=1)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {e.dotted_string for e in eku} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    assert ca.verify_chain(chain) == ALICE.uri


def test_lifetime_default_and_cap(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(CaSettings(tmp_path, leaf_ttl=DAY, max_leaf_ttl=2 * DAY))
    assert ca.leaf_ttl(0) == DAY
    assert ca.leaf_ttl(20) == 20
    assert ca.leaf_ttl(30 * DAY) == 2 * DAY
    assert parse_duration("24h") == DAY and parse_duration("1h30m") == 5400
    assert parse_duration("20s") == 20 and parse_duration("45") == 45
    for bad in ("", "1x", "h", "-5s", "0"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_rotation_adds_before_signing_and_retires_after_the_longest_leaf(tmp_path: Path) -> None:
    clock = Clock()
    settings = CaSettings(tmp_path, leaf_ttl=DAY)
    ca = CertificateAuthority.open(settings, clock=clock)
    (old,) = ca.trust_bundle()
    new = ca.rotate_root()

    # At once: both trusted, the old one still signs (workloads lack the new root).
    assert ca.trust_bundle() == [old, new.cert]
    assert ca.sign(_csr(), ALICE.uri, 60)[-1] == old
    # After one leaf lifetime everyone renewed and holds both: the new one signs.
    clock.now += DAY
    chain = ca.sign(_csr(), ALICE.uri, 60)
    assert chain[-1] == new.cert
    assert chain[0].issuer == new.cert.subject
    # The last old-signed leaf expires a lifetime later; until then the old root stays.
    clock.now += DAY - 1
    assert ca.trust_bundle() == [old, new.cert]
    # The state survives a restart mid-rotation.
    assert CertificateAuthority.open(settings, clock=clock).trust_bundle() == [old, new.cert]
    clock.now += 2
    assert ca.trust_bundle() == [new.cert]
    assert len(list(tmp_path.glob("root-*.key.pem"))) == 1
    assert CertificateAuthority.open(settings, clock=clock).trust_bundle() == [new.cert]


def test_operator_intermediate_signs_with_the_chain_up_to_the_root(tmp_path: Path) -> None:
    now = Clock()()
    root_key, root = make_root("cluster.local", now, "corp root")
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "mesh ica")]))
        .issuer_name(root.subject)
        .public_key(inter_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(root.not_valid_before_utc)
        .not_valid_after(root.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(inter_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (tmp_path / "ica.pem").write_bytes(inter.public_bytes(pem))
    (tmp_path / "ica.key").write_bytes(
        inter_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / "root.pem").write_bytes(root.public_bytes(pem))
    settings = CaSettings(
        tmp_path / "ca",
        ca_cert=tmp_path / "ica.pem",
        ca_key=tmp_path / "ica.key",
        ca_chain=tmp_path / "root.pem",
    )
    ca = CertificateAuthority.open(settings, clock=lambda: now)
    assert ca.trust_bundle() == [root]
    chain = ca.sign(_csr(), ALICE.uri, 60)
    assert chain[1:] == [inter, root]
    assert ca.verify_chain(chain[:2]) == ALICE.uri
    with pytest.raises(CaError, match="replacing its files"):
        ca.rotate_root()
    # An intermediate without its chain cannot say which root to trust.
    with pytest.raises(CaError, match="--ca-chain"):
        CertificateAuthority.open(
            CaSettings(tmp_path / "ca", ca_cert=tmp_path / "ica.pem", ca_key=tmp_path / "ica.key")
        )


def test_verify_chain_refuses_other_cas_and_expired_leaves(tmp_path: Path) -> None:
    clock = Clock()
    ca = CertificateAuthority.open(CaSettings(tmp_path / "a"), clock=clock)
    other = CertificateAuthority.open(CaSettings(tmp_path / "b"), clock=clock)
    with pytest.raises(ValueError, match="does not verify"):
        ca.verify_chain(other.sign(_csr(), ALICE.uri, 60)[:1])
    chain = ca.sign(_csr(), ALICE.uri, 60)
    clock.now += 61
    with pytest.raises(ValueError, match="does not verify"):
        ca.verify_chain(chain[:1])


def test_sign_leaf_never_outlives_its_issuer(tmp_path: Path) -> None:
    key, root = make_root("cluster.local", 0.0, "short")
    leaf = sign_leaf(_csr(), ALICE.uri, issuer=root, issuer_key=key, now=0.0, ttl=1e10)
    assert leaf.not_valid_after_utc == root.not_valid_after_utc
