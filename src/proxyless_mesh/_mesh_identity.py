"""The identity side of `Mesh` (a base class of it, split from mesh.py).

When the bootstrap names a CA, the mesh gets this workload's SPIFFE
certificate on start and renews it on its loop (security's IdentityManager);
these are the views of it the transports, the serving helpers and a health
endpoint read.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from proxyless_mesh.errors import IdentityError
from proxyless_mesh.security import (
    CertificateCache,
    Credentials,
    IdentityConfig,
    IdentityManager,
    MeshHealth,
)
from proxyless_mesh.telemetry import Telemetry, metrics_meter
from proxyless_mesh.xds_client import XdsClient


class MeshIdentity:
    """This workload's identity; its state is set by `Mesh.__init__`."""

    ready_timeout: float
    telemetry: Telemetry
    _identity_config: IdentityConfig | None
    _certificate_cache: CertificateCache | None
    _identity: IdentityManager | None
    _xds: XdsClient | None

    @property
    def identity(self) -> str | None:
        """This workload's SPIFFE ID when mTLS is on (known from the
        bootstrap even before the first certificate), else None."""
        config = self._identity_config
        return config.identity.uri if config is not None else None

    @property
    def mtls(self) -> bool:
        """Whether this mesh has (or will get on start) a workload identity."""
        return self._identity_config is not None

    @property
    def identity_manager(self) -> IdentityManager | None:
        """The running identity manager (None before start or without mTLS)."""
        return self._identity

    def credentials(self) -> Credentials:
        """The current key/chain/roots; IdentityError without a started identity."""
        if self._identity is None:
            raise IdentityError(
                "this mesh has no workload identity: the bootstrap names no CA "
                "('proxyless_mesh.ca_address'), mtls=False, or the mesh is not started"
            )
        return self._identity.credentials

    def outbound_credentials(self) -> Credentials:
        """The credentials to start an outbound mTLS handshake with: as
        credentials(), but fails closed once the certificate has expired
        (WorkloadCertificateExpiredError, naming the expiry and the last
        renewal error) rather than let every peer refuse it with a TLS alert.
        Inbound keeps serving the current certificate: the peer decides."""
        manager = self._identity
        if manager is None:
            return self.credentials()  # raises the IdentityError documented there
        return manager.valid_credentials()

    def client_ssl_context(self, alpn_protocols: Sequence[str] = ()) -> ssl.SSLContext:
        """Outbound mTLS context of the current certificate (new per rotation):
        verifies the peer's chain, not its SPIFFE ID (see security.verify_peer).
        WorkloadCertificateExpiredError once it expired (see outbound_credentials)."""
        return self.outbound_credentials().client_ssl_context(alpn_protocols)

    def health(self) -> MeshHealth:
        """The mesh's view of itself for a health endpoint: identity ok /
        at_risk / expired / disabled, seconds to the certificate's expiry, the
        last renewal error, and whether the xDS stream is up. Cheap (a clock
        read, no I/O) and safe from any thread; a change of identity state
        first noticed here is logged here (see security/_expiry.py)."""
        manager, xds = self._identity, self._xds
        return MeshHealth.of(
            manager.status() if manager is not None else None,
            xds.connected if xds is not None else False,
        )

    def server_ssl_context(
        self, alpn_protocols: Sequence[str] = (), *, require_client_cert: bool = True
    ) -> ssl.SSLContext:
        """Inbound mTLS context of the current certificate (new per rotation)."""
        return self.credentials().server_ssl_context(
            alpn_protocols, require_client_cert=require_client_cert
        )

    async def _start_identity(self) -> None:
        """First certificate before anything else: a workload that cannot
        prove who it is must not start half-meshed. A refusal by the CA
        (TokenRejectedError) or a CA that does not answer in `ready_timeout`
        (CertificateAuthorityUnavailableError) ends the start."""
        config = self._identity_config
        if config is None:
            return
        manager = IdentityManager(
            config,
            meter=metrics_meter(self.telemetry.config),
            cache=self._certificate_cache,
        )
        await manager.start_within(self.ready_timeout)
        self._identity = manager
