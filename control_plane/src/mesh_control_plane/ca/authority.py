"""`CertificateAuthority`: signs workload certificates and keeps the trust bundle.

Two modes:
- generated (default): self-signed ECDSA roots kept in the CA dir. State is
  `roots.json`, a list of roots, each with `activates_at` (when it starts
  signing) and `retires_at` (when it leaves the bundle, null while current),
  and per root `root-<id>.cert.pem` + `root-<id>.key.pem` (0600).
- operator: `--ca-cert/--ca-key[/--ca-chain]`; the bundle is the chain's root.
  Rotation there is the operator's (replace the files, restart).

Root rotation, the order that never breaks a handshake:
  t0  rotate_root(): new root R2 joins the bundle, R1 keeps signing.
      Workloads pick up the bundle at their next renewal (<= half a leaf life).
  t1 = t0 + propagation (default: the longest leaf lifetime): R2 signs.
  t2 = t1 + longest leaf lifetime: every R1-signed leaf has expired, R1 leaves.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification

from mesh_control_plane.ca.certs import SigningKey, make_root, sign_leaf
from mesh_control_plane.ca.settings import CaSettings
from proxyless_mesh.security import Certificate, ensure_private_dir, write_private_file

__all__ = ["CaError", "CertificateAuthority", "RootRecord"]

log = logging.getLogger(__name__)

STATE_FILE = "roots.json"


class CaError(Exception):
    """The CA cannot start or act: unreadable/mismatched files, unsupported op."""


@dataclass(frozen=True)
class RootRecord:
    """One root of the bundle. `retires_at` None: no successor yet."""

    id: str
    cert: x509.Certificate
    key: SigningKey | None  # None for an operator root we only trust
    activates_at: float
    retires_at: float | None = None


class CertificateAuthority:
    """Thread-safe; `clock` is injectable so rotation is testable without waiting."""

    def __init__(
        self,
        settings: CaSettings,
        roots: list[RootRecord],
        *,
        signer: tuple[x509.Certificate, SigningKey, tuple[x509.Certificate, ...]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.trust_domain = settings.trust_domain
        self._roots = roots
        self._signer = signer  # operator mode: (cert, key, chain up to the root)
        self._clock = clock
        self._lock = threading.Lock()

    # -- opening ------------------------------------------------------------------

    @classmethod
    def open(
        cls, settings: CaSettings, *, clock: Callable[[], float] = time.time
    ) -> CertificateAuthority:
        """Load the CA from its files, creating a root on first start."""
        ensure_private_dir(settings.ca_dir)
        if settings.ca_cert is not None or settings.ca_key is not None:
            return cls._open_operator(settings, clock)
        if problem := settings.schedule_problem():
            raise CaError(problem)
        roots = _load_state(settings.ca_dir)
        ca = cls(settings, roots, clock=clock)
        if not roots:
            ca._add_root(activates_at=clock())
            log.info("created a new root CA in %s", settings.ca_dir)
        return ca

    @classmethod
    def _open_operator(
        cls, settings: CaSettings, clock: Callable[[], float]
    ) -> CertificateAuthority:
        if settings.ca_cert is None or settings.ca_key is None:
            raise CaError("--ca-cert and --ca-key go together")
        try:
            certs = x509.load_pem_x509_certificates(settings.ca_cert.read_bytes())
            key = serialization.load_pem_private_key(settings.ca_key.read_bytes(), None)
            chain = (
                tuple(x509.load_pem_x509_certificates(settings.ca_chain.read_bytes()))
                if settings.ca_chain
                else ()
            )
        except (OSError, ValueError, TypeError) as exc:
            raise CaError(f"cannot read the operator CA files: {exc}") from None
        cert = certs[0]
        chain = (*certs[1:], *chain)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CaError("--ca-key must be an ECDSA or RSA private key")
        if key.public_key() != cert.public_key():
            raise CaError("--ca-key does not belong to --ca-cert")
        try:
            ca_flag = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca_flag = False
        if not ca_flag:
            raise CaError("--ca-cert is not a CA certificate (basicConstraints CA:TRUE)")
        root = chain[-1] if chain else cert
        if root.subject != root.issuer:
            raise CaError(
                "--ca-cert is an intermediate: give --ca-chain with the certificates up to "
                "and including the root"
            )
        record = RootRecord("operator", root, None, activates_at=0.0)
        return cls(settings, [record], signer=(cert, key, chain), clock=clock)

    # -- reading ------------------------------------------------------------------

    def trust_bundle(self) -> list[x509.Certificate]:
        """Every root a workload must trust now (the next signer included)."""
        with self._lock:
            return [r.cert for r in self._current_roots()]

    def roots(self) -> list[RootRecord]:
        with self._lock:
            return list(self._current_roots())

    def leaf_ttl(self, requested: float) -> float:
        """The lifetime to issue: the default when 0 is asked, capped by the max."""
        longest = self.settings.longest_leaf_ttl
        return min(requested, longest) if requested > 0 else min(self.settings.leaf_ttl, longest)

    # -- signing ------------------------------------------------------------------

    def sign(
        self, csr: x509.CertificateSigningRequest, spiffe_id: str, ttl: float
    ) -> list[x509.Certificate]:
        """Sign `csr` for `spiffe_id` (the caller checked it is what the proof
        grants); returns the chain leaf first, root last."""
        with self._lock:
            now = self._clock()
            if self._signer is not None:
                cert, key, chain = self._signer
                leaf = sign_leaf(csr, spiffe_id, issuer=cert, issuer_key=key, now=now, ttl=ttl)
                return [leaf, cert, *chain] if chain else [leaf, cert]
            root = self._signing_root(now)
            if root.key is None:
                raise CaError(f"root {root.id} has no key")
            leaf = sign_leaf(
                csr, spiffe_id, issuer=root.cert, issuer_key=root.key, now=now, ttl=ttl
            )
            return [leaf, root.cert]

    def verify_chain(self, chain: Sequence[x509.Certificate]) -> str:
        """The SPIFFE ID of a workload chain (leaf first) that verifies now
        against the bundle; ValueError saying why not otherwise."""
        if not chain:
            raise ValueError("empty certificate chain")
        store = verification.Store(self.trust_bundle())
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        verifier = verification.PolicyBuilder().store(store).time(now).build_client_verifier()
        try:
            verifier.verify(chain[0], list(chain[1:]))
        except verification.VerificationError as exc:
            raise ValueError(f"the certificate chain does not verify: {exc}") from None
        sid = Certificate.from_der(chain[0].public_bytes(serialization.Encoding.DER)).spiffe_id
        if sid is None:
            raise ValueError("the certificate has no SPIFFE ID")
        return sid

    # -- rotation -------------------------------------------------------------------

    def rotate_root(self, propagation: float | None = None) -> RootRecord:
        """Add a new root now; it signs after `propagation` seconds (default: the
        longest leaf lifetime), and the current signer retires one longest leaf
        lifetime after that. Returns the new root's record."""
        if self._signer is not None:
            raise CaError("the operator's CA is rotated by replacing its files and restarting")
        with self._lock:
            now = self._clock()
            longest = self.settings.longest_leaf_ttl
            activates = now + (longest if propagation is None else propagation)
            self._roots = [
                r if r.retires_at is not None else _retire(r, activates + longest)
                for r in self._roots
            ]
            new = self._add_root_locked(activates)
        log.info("root rotation: new root %s signs from %s", new.id, _iso(activates))
        return new

    def rotation_due(self) -> bool:
        """Whether the newest generated root has no more than the rotation lead
        left (its successor must be made now); never for an operator's CA."""
        if self._signer is not None:
            return False
        with self._lock:
            newest = max(self._current_roots(), key=lambda r: r.activates_at, default=None)
            if newest is None:
                return False
            left = newest.cert.not_valid_after_utc.timestamp() - self._clock()
        return left <= self.settings.rotation_lead

    def reload(self) -> None:
        """Take the roots from the CA dir again: another replica rotated and its
        files were written here (kube/ca_secret.py). Keeps the roots on error."""
        if self._signer is not None:
            return
        roots = _load_state(self.settings.ca_dir)
        with self._lock:
            self._roots = roots
        log.info("CA roots reloaded: %s", ", ".join(r.id for r in roots))

    # -- internals ------------------------------------------------------------------

    def _current_roots(self) -> list[RootRecord]:
        """Drop roots past retirement (and their files); the lock is held."""
        now = self._clock()
        keep = [r for r in self._roots if r.retires_at is None or r.retires_at > now]
        if len(keep) != len(self._roots) and self._signer is None:
            for gone in (r for r in self._roots if r not in keep):
                log.info("root %s retired", gone.id)
                for path in _root_files(self.settings.ca_dir, gone.id):
                    path.unlink(missing_ok=True)
            self._roots = keep
            _save_state(self.settings.ca_dir, keep)
        return keep

    def _signing_root(self, now: float) -> RootRecord:
        active = [r for r in self._current_roots() if r.activates_at <= now]
        if not active:
            raise CaError("no root is active yet")
        return max(active, key=lambda r: r.activates_at)

    def _add_root(self, activates_at: float) -> RootRecord:
        with self._lock:
            return self._add_root_locked(activates_at)

    def _add_root_locked(self, activates_at: float) -> RootRecord:
        root_id = secrets.token_hex(4)
        key, cert = make_root(
            self.trust_domain,
            self._clock(),
            f"proxyless-mesh root {root_id}",
            dt.timedelta(seconds=self.settings.root_ttl),
        )
        cert_path, key_path = _root_files(self.settings.ca_dir, root_id)
        write_private_file(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        write_private_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        record = RootRecord(root_id, cert, key, activates_at)
        self._roots = [*self._roots, record]
        _save_state(self.settings.ca_dir, self._roots)
        return record


def _retire(record: RootRecord, at: float) -> RootRecord:
    return RootRecord(record.id, record.cert, record.key, record.activates_at, at)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _root_files(ca_dir: Path, root_id: str) -> tuple[Path, Path]:
    return ca_dir / f"root-{root_id}.cert.pem", ca_dir / f"root-{root_id}.key.pem"


def _save_state(ca_dir: Path, roots: Sequence[RootRecord]) -> None:
    doc = [{"id": r.id, "activates_at": r.activates_at, "retires_at": r.retires_at} for r in roots]
    write_private_file(ca_dir / STATE_FILE, (json.dumps({"roots": doc}, indent=2) + "\n").encode())


def _load_state(ca_dir: Path) -> list[RootRecord]:
    path = ca_dir / STATE_FILE
    if not path.exists():
        return []
    try:
        doc: Any = json.loads(path.read_text())
        roots = []
        for entry in doc["roots"]:
            cert_path, key_path = _root_files(ca_dir, str(entry["id"]))
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
                raise ValueError(f"{key_path}: not an ECDSA or RSA key")
            roots.append(
                RootRecord(
                    str(entry["id"]),
                    cert,
                    key,
                    float(entry["activates_at"]),
                    None if entry["retires_at"] is None else float(entry["retires_at"]),
                )
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CaError(f"cannot load the CA state in {ca_dir}: {exc}") from None
    return roots
