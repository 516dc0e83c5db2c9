"""Security intent as xDS carries it: upstream TLS per cluster, and what a
server-side (inbound) listener enforces on one port.

Upstream: Istio's ISTIO_MUTUAL becomes an UpstreamTlsContext whose
certificates come from the certificate provider instance "default" (gRFC
A29) and whose SAN matchers name the SPIFFE IDs the destination's workloads
hold. Inbound: a server listener (gRPC's `server_listener_resource_name_
template`, e.g. `grpc/server?xds.resource.listening_address=0.0.0.0:8080`)
whose filter chains carry the DownstreamTlsContext (PeerAuthentication) and
whose HTTP filters carry JWT authentication and RBAC (RequestAuthentication,
AuthorizationPolicy).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from proxyless_mesh.model._rbac import JwtAuthentication, Rbac


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """Client-side mutual TLS toward a cluster: present the workload
    certificate, verify the peer's chain against the mesh roots, and accept
    only these SPIFFE IDs (empty: any identity the mesh roots vouch for)."""

    expected_spiffe_ids: tuple[str, ...] = ()
    sni: str = ""
    origination: OriginationTls | None = None
    """Set: not mesh mTLS but TLS to a server outside the mesh (DestinationRule
    `tls` SIMPLE or MUTUAL); `expected_spiffe_ids` is then empty."""


@dataclass(frozen=True, slots=True)
class OriginationTls:
    """TLS origination (Istio's SIMPLE / MUTUAL): trust `ca_file` (empty: the
    system's roots), present `cert_file`/`key_file` when both are set (MUTUAL),
    and accept a server certificate naming one of `subject_alt_names` (DNS or
    URI SANs; empty: the SNI, as Istio verifies by default)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    subject_alt_names: tuple[str, ...] = ()


INBOUND_PASSTHROUGH = "virtualInbound"
"""The server listener a mesh workload also watches: the control plane's answer
for a port no ServiceEntry or WorkloadEntry declares (Istio's inbound
passthrough chain): the PeerAuthentication and AuthorizationPolicies that
select the workload by its namespace and labels (node metadata)."""
INBOUND_PASSTHROUGH_PORT = 15006
"""Its address port: Istio's virtual inbound port (nothing binds it here)."""
OUTBOUND_POLICY_LISTENER = "virtualOutbound"
"""The client listener a mesh workload also watches when it resolves a host:
present only when the workload's Sidecar sets `outboundTrafficPolicy`, whose
mode (ALLOW_ANY or REGISTRY_ONLY) it carries and which then overrides the
client's own `outbound_policy` (Istio: the Sidecar overrides the mesh default)."""
OUTBOUND_POLICY_METADATA = "proxyless_mesh.io/outbound"
"""Its listener metadata key: `{"mode": "ALLOW_ANY" | "REGISTRY_ONLY"}`."""


class TlsMode(enum.Enum):
    """Inbound mTLS mode per PeerAuthentication."""

    STRICT = "STRICT"  # mTLS only; plaintext is refused
    PERMISSIVE = "PERMISSIVE"  # mTLS and plaintext on the same port
    DISABLE = "DISABLE"  # plaintext only


@dataclass(frozen=True, slots=True)
class InboundListener:
    """What the workload's server on one address enforces.

    `rbac` holds the RBAC engines in the order they run (Istio lays them out
    as AUDIT (LOG), DENY, ALLOW); `jwt` is request authentication, run before
    them. `tls_mode` decides whether the server demands a client certificate.
    """

    name: str
    address: str
    port: int
    tls_mode: TlsMode = TlsMode.PERMISSIVE
    rbac: tuple[Rbac, ...] = ()
    jwt: JwtAuthentication | None = None
    # Istio's pathNormalization applied before authorization: BASE,
    # MERGE_SLASHES or DECODE_AND_MERGE_SLASHES.
    path_normalization: str = "BASE"
    # The Telemetry API specs that apply to this workload, as JSON.
    telemetry: str | None = None
