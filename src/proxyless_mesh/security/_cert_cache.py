"""`CertificateCache`: this workload's key and certificate on disk, so a
restart during a CA outage starts with the identity it had.

The trade-off, chosen on purpose and switchable off (`Mesh(cache_certificate=
False)` or the bootstrap's `proxyless_mesh.certificate_cache: false`): a key on
disk can be read by anyone who can read this user's files, for as long as the
certificate lives (24 h by default); without it, a workload restarted while the
CA is down cannot start at all. Istio's sidecars keep keys in memory only, but
their node agent outlives the application's restarts; here the process is the
agent, so the disk is what survives a restart.

What keeps the risk small: one file, mode 0600 from its first byte, in the
config cache's private directory, replaced atomically (never half a key); only
used while the certificate has not expired, only for the SPIFFE ID the
bootstrap names and only if key and leaf belong together. A cached certificate
is a start, not a renewal: the identity manager asks the CA for a fresh one at
once and keeps asking until it answers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.security._certificates import Certificate
from proxyless_mesh.security._credentials import Credentials
from proxyless_mesh.security._files import ensure_private_dir, write_private_file
from proxyless_mesh.security._keys import load_private_key

__all__ = ["CERTIFICATE_CACHE_FIELD", "CertificateCache"]

log = logging.getLogger("proxyless_mesh.security")

#: The bootstrap's `proxyless_mesh` field that turns the cache off (`false`).
CERTIFICATE_CACHE_FIELD = "certificate_cache"
FORMAT = "proxyless-mesh-workload-certificate"
SCHEMA_VERSION = 1


class CertificateCache:
    """One JSON file: key (PKCS#8 PEM), chain and roots (PEM lists), and the
    local time the chain was fetched (renewal is scheduled from it)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def beside(
        cls, config_cache: Path | None, bootstrap: Bootstrap, enabled: bool | None
    ) -> CertificateCache | None:
        """The cache beside the config cache file `config_cache` (same private
        directory, suffix `.identity`). `enabled` None: as the bootstrap's
        `proxyless_mesh.certificate_cache` says (default on); False: off. Off
        too when the config cache is (None)."""
        if enabled is None:
            enabled = bootstrap.proxyless_mesh.get(CERTIFICATE_CACHE_FIELD) is not False
        if not enabled or config_cache is None:
            return None
        return cls(config_cache.with_suffix(".identity"))

    def load(self, spiffe_id: str, now: float) -> Credentials | None:
        """The cached credentials for `spiffe_id` if still valid at `now`;
        None (with the reason at INFO) otherwise. Never raises: a bad file must
        not stop a start that the CA could still serve."""
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.info("ignoring the cached workload certificate %s: %s", self.path, exc)
            return None
        try:
            credentials = _decode(doc)
        except (KeyError, TypeError, ValueError) as exc:
            log.info("ignoring the cached workload certificate %s: %s", self.path, exc)
            return None
        reason = _unusable(credentials, spiffe_id, now)
        if reason is not None:
            log.info("ignoring the cached workload certificate %s: %s", self.path, reason)
            return None
        return credentials

    def save(self, credentials: Credentials) -> None:
        """Replace the file atomically (0600). I/O errors are logged, not raised:
        a full disk must not stop a rotation."""
        doc = {
            "format": FORMAT,
            "schema": SCHEMA_VERSION,
            "spiffe_id": credentials.spiffe_id,
            "fetched_at": credentials.fetched_at,
            "key": credentials.private_key_pem().decode(),
            "chain": [c.pem for c in credentials.chain],
            "roots": [c.pem for c in credentials.roots],
        }
        try:
            ensure_private_dir(self.path.parent)
            write_private_file(self.path, json.dumps(doc).encode())
        except OSError as exc:
            log.warning("cannot write the workload certificate cache %s: %s", self.path, exc)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _decode(doc: dict[str, object]) -> Credentials:
    if doc.get("format") != FORMAT or doc.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"not a {FORMAT} file of schema {SCHEMA_VERSION}")
    key = load_private_key(str(doc["key"]).encode())
    chain = tuple(Certificate.from_pem(p) for p in _strings(doc["chain"]))
    roots = tuple(Certificate.from_pem(p) for p in _strings(doc["roots"]))
    return Credentials(key, chain, roots, fetched_at=float(str(doc["fetched_at"])))


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of PEM strings")
    return value


def _unusable(credentials: Credentials, spiffe_id: str, now: float) -> str | None:
    """Why these credentials must not be used, or None."""
    leaf = credentials.leaf
    if leaf.spiffe_id != spiffe_id:
        return f"it is for {leaf.spiffe_id}, this workload is {spiffe_id}"
    if leaf.public_key_der != credentials.key.public_key_der():
        return "the key does not match the certificate"
    if now >= credentials.expires_at:
        return f"it expired at {credentials.not_after.isoformat()}"
    if now < leaf.not_before:
        return f"it is not valid before {leaf.not_valid_before_utc.isoformat()}"
    return None
