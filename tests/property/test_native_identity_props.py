"""Differential test of the workload identity (issue 25): the library's key,
CSR and certificate reader (the native core's Rust) against `cryptography`,
the oracle here (`_reference_csr`, `_reference_read`: test-only, not shipped).

- CSR: for generated SPIFFE IDs, the library's CSR's to-be-signed part is
  byte for byte the one cryptography builds for the same key (loaded from
  the library key's PKCS#8 PEM), and its signature verifies.
- Keys: a library signature verifies under cryptography, and a cryptography
  PKCS#8 key loads into the library with the same public key.
- Certificates: generated certificates (EC and RSA keys, validity from 1970
  to 9999 so both UTCTime and GeneralizedTime, SANs of mixed kinds or none,
  critical or not) read the same in both; malformed input is ValueError in
  both. One stated difference: dates before 1970 (the `der` crate's range),
  which the native reader refuses and a CA of this mesh never issues.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from proxyless_mesh.security import (
    Certificate,
    SpiffeId,
    load_private_key,
    new_private_key,
)

DER = serialization.Encoding.DER
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo

# Names as SpiffeId accepts them: no '/', no whitespace; long ones reach
# two-byte DER lengths (>127) in the SAN and the request info.
name = st.text(
    alphabet=st.sampled_from(["a", "z", "0", "-", ".", "_", "%", "é"]), min_size=1, max_size=90
)
identities = st.builds(SpiffeId, name, name, name)


def _csr_or_refusal(make: Callable[[], bytes]) -> bytes | None:
    """The CSR, or None where it is refused (ValueError: a non-ASCII URI)."""
    try:
        return make()
    except ValueError:
        return None


def _as_cryptography(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _pkcs8_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _reference_csr(key: ec.EllipticCurvePrivateKey, uri: str) -> bytes:
    """The oracle's CSR: empty subject, `uri` the only (critical) SAN."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
        )
        .sign(key, hashes.SHA256())
        .public_bytes(DER)
    )


def _reference_read(der: bytes) -> tuple[float, float, tuple[str, ...], bytes]:
    """The oracle's reading: validity (POSIX seconds), URI SANs in order, SPKI DER."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = ()
    return (
        cert.not_valid_before_utc.timestamp(),
        cert.not_valid_after_utc.timestamp(),
        uris,
        cert.public_key().public_bytes(DER, SPKI),
    )


def _read(der: bytes) -> tuple[float, float, tuple[str, ...], bytes]:
    cert = Certificate.from_der(der)
    return (cert.not_before, cert.not_after, cert.uris, cert.public_key_der)


@settings(max_examples=60, deadline=None)
@given(identities)
def test_the_csr_is_the_one_cryptography_builds(identity: SpiffeId) -> None:
    key = new_private_key()
    reference_key = _as_cryptography(key.private_key_pem())
    native_der = _csr_or_refusal(lambda: key.csr_der(identity.uri))
    reference = _csr_or_refusal(lambda: _reference_csr(reference_key, identity.uri))
    assert (native_der is None) == (reference is None) == (not identity.uri.isascii())
    if native_der is None or reference is None:
        return
    native = x509.load_der_x509_csr(native_der)
    assert native.is_signature_valid
    assert native.tbs_certrequest_bytes == x509.load_der_x509_csr(reference).tbs_certrequest_bytes
    san = native.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        identity.uri
    ]


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=300))
def test_keys_sign_and_load_as_cryptography_does(data: bytes) -> None:
    key = new_private_key()
    public = _as_cryptography(key.private_key_pem()).public_key()
    public.verify(key.sign(data), data, ec.ECDSA(hashes.SHA256()))  # raises if not
    assert public.public_bytes(DER, SPKI) == key.public_key_der()
    other = ec.generate_private_key(ec.SECP256R1())
    loaded = load_private_key(_pkcs8_pem(other))
    assert loaded.public_key_der() == other.public_key().public_bytes(DER, SPKI)


def test_keys_that_are_not_p256_are_refused() -> None:
    for other in (ec.generate_private_key(ec.SECP384R1()), _rsa_key()):
        with pytest.raises(ValueError):
            load_private_key(_pkcs8_pem(other))


@functools.cache
def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


general_names = st.one_of(
    st.builds(x509.UniformResourceIdentifier, st.text("spife:/abc.-", min_size=1, max_size=40)),
    st.builds(x509.DNSName, st.text("abc.-", min_size=1, max_size=20)),
    st.builds(x509.RFC822Name, st.just("a@b.c")),
)
times = st.datetimes(
    min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)
).map(lambda t: t.replace(microsecond=0, tzinfo=dt.UTC))


@st.composite
def certificates(draw: st.DrawFn) -> bytes:
    key = _rsa_key() if draw(st.booleans()) else _ec_key()
    not_before, not_after = sorted((draw(times), draw(times)))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "w")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(draw(st.integers(1, 2**159 - 1)))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    names = draw(st.none() | st.lists(general_names, min_size=1, max_size=4))
    if names is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names), critical=draw(st.booleans())
        )
    if draw(st.booleans()):
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    return builder.sign(_ec_key(), hashes.SHA256()).public_bytes(DER)


@settings(max_examples=80, deadline=None)
@given(certificates())
def test_certificates_read_the_same(der: bytes) -> None:
    assert _read(der) == _reference_read(der)


@pytest.mark.parametrize(
    "case",
    ["empty", "truncated", "trailing bytes", "not DER", "a CSR"],
)
def test_malformed_certificates_are_value_errors_in_both(case: str) -> None:
    good = _one_certificate(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    csr = _reference_csr(_ec_key(), "spiffe://td/ns/a/sa/b")
    data = {
        "empty": b"",
        "truncated": good[:-10],
        "trailing bytes": good + b"\x00",
        "not DER": b"hello",
        "a CSR": csr,
    }[case]
    with pytest.raises(ValueError):
        _read(data)
    with pytest.raises(ValueError):
        _reference_read(data)


def test_dates_before_1970_are_the_stated_difference() -> None:
    der = _one_certificate(dt.datetime(1969, 12, 31, tzinfo=dt.UTC))
    assert _reference_read(der)[0] == -86400
    with pytest.raises(ValueError):
        _read(der)


def _one_certificate(not_before: dt.datetime) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "w")])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(_ec_key().public_key())
        .serial_number(1)
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=1))
        .sign(_ec_key(), hashes.SHA256())
        .public_bytes(DER)
    )
