"""`IdentityConfig`: who this workload is and where its CA is, from the bootstrap.

Bootstrap layout (a top-level object grpcio ignores, so one file still drives
both grpcio's xDS and this library):

    "node": {"metadata": {"NAMESPACE": "shop", "SERVICE_ACCOUNT": "reviews"}},
    "proxyless_mesh": {
        "ca_address": "127.0.0.1:15012",      # the control plane's CA (gRPC)
        "trust_domain": "cluster.local",      # optional, this default
        "token": "<join token>",              # optional: else $PROXYLESS_MESH_TOKEN
        "credentials_dir": "/run/mesh/certs"  # optional: files for grpcio (file_watcher)
    }

The token is not in node metadata on purpose: node metadata is sent to the
control plane on every xDS request and shown by status tools; the token must
only ever reach the CA.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.errors import IdentityConfigError
from proxyless_mesh.security._spiffe import DEFAULT_TRUST_DOMAIN, SpiffeId

__all__ = ["TOKEN_ENV", "IdentityConfig"]

TOKEN_ENV = "PROXYLESS_MESH_TOKEN"


@dataclass(frozen=True)
class IdentityConfig:
    """Everything the identity manager needs. `token` is never shown in repr."""

    ca_address: str
    identity: SpiffeId
    token: str | None = field(default=None, repr=False)
    credentials_dir: Path | None = None
    requested_ttl: int = 0  # seconds; 0 = the CA's default

    @classmethod
    def for_mesh(cls, bootstrap: Bootstrap, mtls: bool | None) -> IdentityConfig | None:
        """The identity settings of a Mesh: `mtls=False` none; None: from the
        bootstrap when it names a CA, else none; True: from the bootstrap
        (IdentityConfigError when it names no CA)."""
        if mtls is False:
            return None
        if mtls is None and not bootstrap.proxyless_mesh.get("ca_address"):
            return None
        return cls.from_bootstrap(bootstrap)

    @classmethod
    def from_bootstrap(
        cls, bootstrap: Bootstrap, environ: Mapping[str, str] | None = None
    ) -> IdentityConfig:
        """Read `proxyless_mesh.*` and node metadata NAMESPACE / SERVICE_ACCOUNT;
        the token from the bootstrap, else from $PROXYLESS_MESH_TOKEN."""
        env = os.environ if environ is None else environ
        section = bootstrap.proxyless_mesh
        ca_address = section.get("ca_address")
        if not isinstance(ca_address, str) or not ca_address:
            raise IdentityConfigError(
                "the bootstrap has no 'proxyless_mesh.ca_address' (HOST:PORT of the control "
                "plane's CA): write it with `meshctl bootstrap --ca-address ...`"
            )
        meta = bootstrap.node_metadata
        namespace, account = meta.get("NAMESPACE"), meta.get("SERVICE_ACCOUNT")
        if not isinstance(namespace, str) or not isinstance(account, str):
            raise IdentityConfigError(
                "the bootstrap's node.metadata needs NAMESPACE and SERVICE_ACCOUNT strings "
                "(they name the SPIFFE identity to request)"
            )
        trust_domain = section.get("trust_domain") or DEFAULT_TRUST_DOMAIN
        try:
            identity = SpiffeId(str(trust_domain), namespace, account)
        except ValueError as exc:
            raise IdentityConfigError(f"the bootstrap names an invalid identity: {exc}") from None
        token = section.get("token") or env.get(TOKEN_ENV) or None
        creds_dir = section.get("credentials_dir")
        return cls(
            ca_address=ca_address,
            identity=identity,
            token=str(token) if token else None,
            credentials_dir=Path(creds_dir) if creds_dir else None,
        )
