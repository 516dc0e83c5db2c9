"""`MeshHealth`: what a readiness/liveness probe of a meshed process reads.

A frozen snapshot (cheap to build, safe to hand to another thread) from
`Mesh.health()`, so an application can put the mesh's view of itself in its
own health endpoint without reaching into the identity manager or the xDS
client.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxyless_mesh.security._expiry import IdentityState, IdentityStatus

__all__ = ["MeshHealth"]


@dataclass(frozen=True)
class MeshHealth:
    """The mesh's health at one instant.

    Attributes:
        identity: "ok", "at_risk" (less than a quarter of the certificate's
            lifetime left and renewal failing), "expired" (outbound mTLS is
            refused until the CA renews it) or "disabled" (no identity: mTLS
            off, or the mesh not started). An IdentityState, equal to its string.
        expires_in: seconds until the workload certificate expires (negative
            once expired); None without one.
        last_renewal_error: why the last renewal failed, None since a success.
        renewal_failures: failed renewals in a row.
        xds_connected: whether the ADS stream to the control plane is up now
            (False before start; while down, the last good config stays in use).
    """

    identity: IdentityState
    expires_in: float | None = None
    last_renewal_error: str | None = None
    renewal_failures: int = 0
    xds_connected: bool = False

    @property
    def serving(self) -> bool:
        """False only when this workload cannot talk mTLS any more (its
        certificate expired): the signal for a readiness probe. A lost xDS
        stream is not included: routing continues with the last config."""
        return self.identity is not IdentityState.EXPIRED

    @classmethod
    def of(cls, identity: IdentityStatus | None, xds_connected: bool) -> MeshHealth:
        """From the identity manager's status (None: no identity) and the
        state of the xDS stream."""
        if identity is None:
            return cls(IdentityState.DISABLED, xds_connected=xds_connected)
        return cls(
            identity.state,
            identity.expires_in,
            identity.last_renewal_error,
            identity.renewal_failures,
            xds_connected,
        )
