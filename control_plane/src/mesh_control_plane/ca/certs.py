"""X.509 builders for the CA: roots and workload leaves (SVIDs).

Profiles follow RFC 5280 closely enough for strict verifiers (cryptography's
own, OpenSSL with X509_STRICT, Go's crypto/x509): CA certs carry basic
constraints, key usage and a subject key id; leaves have an empty subject, so
their SAN is critical, and an authority key id pointing at the issuer.
"""

from __future__ import annotations

import datetime as dt
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CLOCK_SKEW", "ROOT_VALIDITY", "make_root", "sign_leaf"]

ROOT_VALIDITY = dt.timedelta(days=3650)
#: Leaves are back-dated this much so a peer whose clock is slightly behind
#: still accepts them; clients schedule renewal from when they received them.
CLOCK_SKEW = dt.timedelta(seconds=30)

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def make_root(
    trust_domain: str, now: float, name: str, validity: dt.timedelta = ROOT_VALIDITY
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed ECDSA P-256 root valid `validity` from `now` (and an
    hour before it, for clocks behind ours)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    start = _utc(now) - dt.timedelta(hours=1)
    end = _utc(now) + validity
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def sign_leaf(
    csr: x509.CertificateSigningRequest,
    spiffe_id: str,
    *,
    issuer: x509.Certificate,
    issuer_key: SigningKey,
    now: float,
    ttl: float,
) -> x509.Certificate:
    """A workload certificate for the CSR's key, naming `spiffe_id` only (what
    the CSR asked for beyond its key is ignored: the caller checked it), valid
    `ttl` seconds from `now` but never past the issuer's own notAfter."""
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("the CSR's key must be ECDSA or RSA")
    not_after = min(_utc(now + ttl), issuer.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(_utc(now) - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
