"""Workload identity: SPIFFE certificates from the control plane's CA, rotated
in-process, and the TLS pieces built from them.

- `IdentityManager(IdentityConfig.from_bootstrap(b))`: `await start()` gets the
  first certificate with the join token, then renews at half life with jitter;
  `spiffe_id`, `credentials`, `client_ssl_context()`, `server_ssl_context()`,
  `add_listener()`, `certificate_providers()` (grpcio's file_watcher).
- Expiry risk: `IdentityManager.status()` -> `IdentityStatus` (`IdentityState`
  ok / at_risk / expired / disabled, seconds to expiry, last renewal error);
  `valid_credentials()` fails closed with WorkloadCertificateExpiredError once
  the certificate expired; `MeshHealth` is what `Mesh.health()` returns.
- `CertificateCache`: the workload key and certificate on disk (0600) for a
  restart during a CA outage; the trade-off is in _cert_cache.py.
- `Credentials`: one immutable key/chain/roots set and its cached SSL contexts.
- `WorkloadKey` (`new_private_key`, `load_private_key`, `make_csr`) and
  `Certificate`: the key, CSR and certificate facts, in the native core's
  Rust (no `cryptography` import).
- `peer_spiffe_id()` / `verify_peer()`: who the peer of a TLS connection is,
  checked after the handshake (Python's ssl cannot match URI SANs).
- `InboundTls`, `asgi_tls_extension()`: the serving side
  (PeerAuthentication modes, TLS-or-plaintext sniffing, the ASGI `tls`
  extension), used by integrations/_serving.py.
- The CA client's wire format (protobuf) is `proxyless_mesh.ca_wire`, kept out
  of this package: below the integrations only the wire codecs use protobuf.
"""

from proxyless_mesh.security._ca_client import CaClient, SignedChain
from proxyless_mesh.security._cert_cache import CERTIFICATE_CACHE_FIELD, CertificateCache
from proxyless_mesh.security._certificates import Certificate
from proxyless_mesh.security._config import TOKEN_ENV, IdentityConfig
from proxyless_mesh.security._credentials import Credentials
from proxyless_mesh.security._expiry import IdentityState, IdentityStatus
from proxyless_mesh.security._files import ensure_private_dir, write_private_file
from proxyless_mesh.security._grpc_files import CredentialFiles, file_watcher_provider
from proxyless_mesh.security._health import MeshHealth
from proxyless_mesh.security._identity import CredentialsListener, IdentityManager
from proxyless_mesh.security._inbound import (
    TLS_HANDSHAKE_BYTE,
    InboundTls,
    asgi_tls_extension,
    plaintext_refusal,
)
from proxyless_mesh.security._keys import (
    WorkloadKey,
    load_private_key,
    make_csr,
    new_private_key,
)
from proxyless_mesh.security._spiffe import (
    DEFAULT_TRUST_DOMAIN,
    SpiffeId,
    peer_spiffe_id,
    verify_peer,
)

__all__ = [
    "CERTIFICATE_CACHE_FIELD",
    "DEFAULT_TRUST_DOMAIN",
    "TLS_HANDSHAKE_BYTE",
    "TOKEN_ENV",
    "CaClient",
    "Certificate",
    "CertificateCache",
    "CredentialFiles",
    "Credentials",
    "CredentialsListener",
    "IdentityConfig",
    "IdentityManager",
    "IdentityState",
    "IdentityStatus",
    "InboundTls",
    "MeshHealth",
    "SignedChain",
    "SpiffeId",
    "WorkloadKey",
    "asgi_tls_extension",
    "ensure_private_dir",
    "file_watcher_provider",
    "load_private_key",
    "make_csr",
    "new_private_key",
    "peer_spiffe_id",
    "plaintext_refusal",
    "verify_peer",
    "write_private_file",
]
