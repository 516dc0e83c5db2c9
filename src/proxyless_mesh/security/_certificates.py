"""`Certificate`: the facts the mesh reads off an X.509 certificate (validity,
URI SANs, public key), and the DER it came from.

The native core reads them (`proxyless_mesh_native.read_certificate`, Rust
x509-cert), so nothing in the library holds a `cryptography` object and a
meshed process never imports it for its identity (issue 25). tests/property/
test_native_identity_props.py holds the reader to `cryptography`'s reading.
"""

from __future__ import annotations

import base64
import binascii
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from proxyless_mesh import native_core

__all__ = ["Certificate", "pem_decode", "pem_encode"]

_SPIFFE_SCHEME = "spiffe://"

# (not_before, not_after) POSIX seconds, URI SANs in order, SubjectPublicKeyInfo DER
Facts = tuple[int, int, list[str], bytes]

_read: Callable[[bytes], Facts] = native_core.member("read_certificate")


@dataclass(frozen=True)
class Certificate:
    """One certificate, equal to another exactly when their DER is."""

    der: bytes = field(repr=False)
    not_before: float = field(compare=False)
    not_after: float = field(compare=False)
    uris: tuple[str, ...] = field(compare=False)
    public_key_der: bytes = field(compare=False, repr=False)

    @classmethod
    def from_der(cls, der: bytes) -> Certificate:
        """ValueError if `der` is not one DER certificate."""
        not_before, not_after, uris, spki = _read(bytes(der))
        return cls(bytes(der), float(not_before), float(not_after), tuple(uris), bytes(spki))

    @classmethod
    def from_pem(cls, pem: str | bytes) -> Certificate:
        """One PEM certificate; ValueError otherwise."""
        return cls.from_der(pem_decode("CERTIFICATE", pem))

    @property
    def pem(self) -> str:
        return ssl.DER_cert_to_PEM_cert(self.der)

    @property
    def not_valid_before_utc(self) -> datetime:
        return datetime.fromtimestamp(self.not_before, UTC)

    @property
    def not_valid_after_utc(self) -> datetime:
        return datetime.fromtimestamp(self.not_after, UTC)

    @property
    def spiffe_id(self) -> str | None:
        """The SPIFFE ID if the certificate has exactly one URI SAN and it is
        a spiffe:// one (the SVID rule: one identity per certificate)."""
        if len(self.uris) != 1 or not self.uris[0].startswith(_SPIFFE_SCHEME):
            return None
        return self.uris[0]


def pem_encode(label: str, der: bytes) -> str:
    """RFC 7468 text: base64 in lines of 64 between BEGIN/END `label`."""
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""])


def pem_decode(label: str, pem: str | bytes) -> bytes:
    """The DER of the first `label` block in `pem`; ValueError if there is none
    or its base64 is malformed (text around the block is ignored, as OpenSSL does)."""
    text = pem.decode("ascii") if isinstance(pem, bytes) else pem
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if stop < 0:
        raise ValueError(f"no PEM {label} block")
    body = "".join(text[start + len(begin) : stop].split())
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"malformed PEM {label}: {exc}") from None
