"""`Credentials`: one immutable set of key + certificate chain + trust roots, and
the SSL contexts built from it.

Rotation swaps a whole `Credentials` object (one reference), so a connection
being set up reads a consistent key/chain/roots triple and a rotation never
touches an SSLContext in use: new connections get the new contexts, existing
ones keep theirs until they close.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from proxyless_mesh import native_core
from proxyless_mesh.security._certificates import Certificate
from proxyless_mesh.security._keys import WorkloadKey

__all__ = ["Credentials"]


@dataclass(frozen=True, eq=False)
class Credentials:
    """A workload's key, its chain (leaf first, then intermediates; the root is
    not sent in handshakes) and the roots it trusts.

    `fetched_at` is the local time (seconds, the manager's clock) the chain was
    received; renewal is scheduled from it, not from the certificate's
    notBefore, which the CA back-dates for clock skew.
    """

    key: WorkloadKey = field(repr=False)
    chain: tuple[Certificate, ...]
    roots: tuple[Certificate, ...]
    fetched_at: float
    _contexts: dict[tuple[str, tuple[str, ...]], ssl.SSLContext] = field(
        default_factory=dict, repr=False
    )
    _native: dict[tuple[str, ...], Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.chain or not self.roots:
            raise ValueError("credentials need a certificate chain and at least one root")

    @property
    def leaf(self) -> Certificate:
        return self.chain[0]

    @property
    def spiffe_id(self) -> str:
        sid = self.leaf.spiffe_id
        if sid is None:
            raise ValueError("the leaf certificate has no SPIFFE ID")
        return sid

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    @property
    def expires_at(self) -> float:
        """notAfter as a POSIX timestamp."""
        return self.leaf.not_after

    @property
    def chain_pem(self) -> str:
        return "".join(c.pem for c in self.chain)

    @property
    def roots_pem(self) -> str:
        return "".join(c.pem for c in self.roots)

    def private_key_pem(self) -> bytes:
        """The key as PKCS#8 PEM: a method, not a property, so it is never
        rendered by accident (repr, debuggers, logging of attributes)."""
        return self.key.private_key_pem()

    def client_ssl_context(self, alpn_protocols: Sequence[str] = ()) -> ssl.SSLContext:
        """Context for outbound mTLS: presents this workload's chain, verifies the
        server's chain against the mesh roots. Hostname checking is off: mesh
        peers are named by SPIFFE ID, checked with `verify_peer` after the
        handshake. Built once per credentials and ALPN list, then shared."""
        return self._context("client", tuple(alpn_protocols))

    def client_tls_config(self, alpn_protocols: Sequence[str] = ()) -> Any:
        """What `client_ssl_context` is for the native (rustls) TLS client: a
        `proxyless_mesh_native.TlsClientConfig` that presents this chain,
        verifies the server's chain against the mesh roots and checks no
        name. The native key goes to it as it is, so it never leaves Rust.
        Built once per credentials and ALPN list, then shared."""
        alpn = tuple(alpn_protocols)
        with self._lock:
            config = self._native.get(alpn)
            if config is None:
                core = native_core.module()
                key: Any = self.key
                if not isinstance(key, core.EcKey):
                    key = core.EcKey.from_pkcs8_pem(self.private_key_pem().decode("ascii"))
                config = core.TlsClientConfig(
                    [c.der for c in self.chain], [c.der for c in self.roots], key, list(alpn)
                )
                self._native[alpn] = config
            return config

    def server_ssl_context(
        self, alpn_protocols: Sequence[str] = (), *, require_client_cert: bool = True
    ) -> ssl.SSLContext:
        """Context for inbound mTLS: presents this workload's chain and, by
        default, requires a client chain that verifies against the mesh roots."""
        kind = "server" if require_client_cert else "server-optional"
        return self._context(kind, tuple(alpn_protocols))

    def _context(self, kind: str, alpn: tuple[str, ...]) -> ssl.SSLContext:
        with self._lock:
            ctx = self._contexts.get((kind, alpn))
            if ctx is None:
                ctx = self._build_context(kind, alpn)
                self._contexts[(kind, alpn)] = ctx
            return ctx

    def _build_context(self, kind: str, alpn: tuple[str, ...]) -> ssl.SSLContext:
        if kind == "client":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.verify_mode = ssl.CERT_REQUIRED if kind == "server" else ssl.CERT_OPTIONAL
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cadata=self.roots_pem)
        with (
            _key_file(self.private_key_pem()) as key_path,
            _key_file(self.chain_pem.encode()) as chain_path,
        ):
            ctx.load_cert_chain(chain_path, key_path)
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx


@contextlib.contextmanager
def _key_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can read `data` from, for `load_cert_chain` (which takes
    only paths). On Linux an anonymous memory file: the key never touches a
    disk. Elsewhere a 0600 file in a fresh 0700 directory, removed at once."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("proxyless-mesh-credential", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="proxyless-mesh-") as tmp:
        path = os.path.join(tmp, "credential.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
