"""proxyless-mesh: a service mesh inside the process, configured over xDS.

    from proxyless_mesh import Mesh
    with Mesh.from_bootstrap() as mesh:
        client = httpx.Client(transport=mesh.httpx_transport())

Everything public is re-exported here; modules starting with `_` are private.
"""

from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.errors import (
    BootstrapError,
    CertificateAuthorityUnavailableError,
    ControlPlaneUnavailableError,
    IdentityConfigError,
    IdentityError,
    MalformedRequestError,
    MeshError,
    MeshRequestError,
    MeshRpcError,
    NoClusterError,
    NoHealthyUpstreamError,
    NoRouteError,
    OutsideMeshError,
    PassthroughCircuitOpenError,
    PeerIdentityError,
    PolicyConfigError,
    RegistrationError,
    ServiceResolutionError,
    TokenRejectedError,
    UnknownServicePortError,
    UnsupportedPolicyError,
    UpstreamConnectionError,
    UpstreamOverflowError,
    UpstreamTimeoutError,
    WorkloadCertificateExpiredError,
)
from proxyless_mesh.integrations import (
    AioAuthorizationServerInterceptor,
    AioMeshChannel,
    AioTelemetryServerInterceptor,
    AsyncMeshTransport,
    AuthorizationMiddleware,
    AuthorizationServerInterceptor,
    MeshChannel,
    MeshTransport,
    TelemetryMiddleware,
    TelemetryServerInterceptor,
    WsgiAuthorizationMiddleware,
    WsgiTelemetryMiddleware,
    peer_identity,
)
from proxyless_mesh.mesh import Mesh
from proxyless_mesh.registration import ConsulRegistration, Registration
from proxyless_mesh.resilience import PassthroughBreaker
from proxyless_mesh.security import IdentityState, MeshHealth
from proxyless_mesh.telemetry import TelemetryConfig

__all__ = [
    "AioAuthorizationServerInterceptor",
    "AioMeshChannel",
    "AioTelemetryServerInterceptor",
    "AsyncMeshTransport",
    "AuthorizationMiddleware",
    "AuthorizationServerInterceptor",
    "Bootstrap",
    "BootstrapError",
    "CertificateAuthorityUnavailableError",
    "ConsulRegistration",
    "ControlPlaneUnavailableError",
    "IdentityConfigError",
    "IdentityError",
    "IdentityState",
    "MalformedRequestError",
    "Mesh",
    "MeshChannel",
    "MeshError",
    "MeshHealth",
    "MeshRequestError",
    "MeshRpcError",
    "MeshTransport",
    "NoClusterError",
    "NoHealthyUpstreamError",
    "NoRouteError",
    "OutsideMeshError",
    "PassthroughBreaker",
    "PassthroughCircuitOpenError",
    "PeerIdentityError",
    "PolicyConfigError",
    "Registration",
    "RegistrationError",
    "ServiceResolutionError",
    "TelemetryConfig",
    "TelemetryMiddleware",
    "TelemetryServerInterceptor",
    "TokenRejectedError",
    "UnknownServicePortError",
    "UnsupportedPolicyError",
    "UpstreamConnectionError",
    "UpstreamOverflowError",
    "UpstreamTimeoutError",
    "WorkloadCertificateExpiredError",
    "WsgiAuthorizationMiddleware",
    "WsgiTelemetryMiddleware",
    "peer_identity",
]
