"""Join tokens: compact JWS (ES256) bound to one SPIFFE identity, expiring.

Signed by a key of their own (`token-signing-key.pem` in the CA dir), not by a
CA key: a token signer compromised or rotated does not touch the trust
bundle, and a CA key never signs anything but certificates.

Claims: iss/aud fixed strings, sub = the SPIFFE ID granted, iat, exp, jti.
Verification accepts only alg ES256 (no "none", no algorithm confusion),
checks the signature, the audience, the expiry, and that `sub` is an Istio
SPIFFE ID. Error reasons never quote the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from proxyless_mesh.security import SpiffeId, ensure_private_dir

__all__ = ["TOKEN_KEY_FILE", "TokenAuthority", "TokenError"]

TOKEN_KEY_FILE = "token-signing-key.pem"
ISSUER = "proxyless-mesh-control-plane"
AUDIENCE = "proxyless-mesh-ca"


class TokenError(Exception):
    """Why a token is refused (`reason`, safe to log and to send back)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Claims:
    identity: SpiffeId
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenAuthority:
    """Mints and verifies join tokens with one ES256 key."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key_id = _b64(hashlib.sha256(der).digest()[:12])

    @classmethod
    def open(cls, ca_dir: Path) -> TokenAuthority:
        """Load the signing key from `ca_dir`, creating it (0600) if absent.
        Creation uses O_EXCL so a control plane and a `meshctl token create`
        starting together end up with the same key."""
        ensure_private_dir(ca_dir)
        path = ca_dir / TOKEN_KEY_FILE
        if not path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # someone else made it first: use theirs, read below
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(pem)
                return cls(key)
        loaded = serialization.load_pem_private_key(path.read_bytes(), None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} is not an ECDSA key")
        return cls(loaded)

    def mint(self, identity: SpiffeId, ttl: float, *, now: float | None = None) -> str:
        """A token granting `identity` for `ttl` seconds."""
        issued = int(time.time() if now is None else now)
        header = {"alg": "ES256", "typ": "JWT", "kid": self.key_id}
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": identity.uri,
            "iat": issued,
            "exp": issued + int(ttl),
            "jti": secrets.token_hex(8),
        }
        signing_input = ".".join(
            _b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def registration_identity(self, token: str) -> tuple[str, str]:
        """A join token's (namespace, service account) for the registry;
        ValueError(reason) when it is refused."""
        try:
            identity = self.verify(token)
        except TokenError as exc:
            raise ValueError(exc.reason) from None
        return identity.namespace, identity.service_account

    def verify(self, token: str, *, now: float | None = None) -> SpiffeId:
        """The identity `token` grants; TokenError(reason) if it grants none."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("the join token is malformed (not a compact JWS)")
        try:
            header = json.loads(_unb64(parts[0]))
            claims: Any = json.loads(_unb64(parts[1]))
            signature = _unb64(parts[2])
        except (ValueError, binascii.Error):
            raise TokenError("the join token is malformed (bad base64url or JSON)") from None
        if not isinstance(header, dict) or header.get("alg") != "ES256":
            raise TokenError("the join token is not signed with ES256")
        if len(signature) != 64:
            raise TokenError("the join token's signature is invalid (forged or another CA's)")
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            self._key.public_key().verify(
                der, f"{parts[0]}.{parts[1]}".encode(), ec.ECDSA(hashes.SHA256())
            )
        except InvalidSignature:
            raise TokenError(
                "the join token's signature is invalid (forged, or minted by another control plane)"
            ) from None
        return self._check_claims(claims, time.time() if now is None else now).identity

    @staticmethod
    def _check_claims(claims: Any, now: float) -> _Claims:
        if not isinstance(claims, dict) or claims.get("aud") != AUDIENCE:
            raise TokenError("the join token is not meant for this CA (audience)")
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            raise TokenError("the join token has no expiry")
        if exp <= now:
            expired = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))
            raise TokenError(f"the join token expired at {expired}; mint a new one")
        try:
            identity = SpiffeId.parse(str(claims.get("sub")))
        except ValueError:
            raise TokenError("the join token names no valid SPIFFE identity") from None
        return _Claims(identity, float(exp))
