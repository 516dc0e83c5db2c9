"""proxyless-mesh: a service mesh inside the process, configured over xDS.

    from proxyless_mesh import Mesh
    with Mesh.from_bootstrap() as mesh:
        client = httpx.Client(transport=mesh.httpx_transport())

Everything public is re-exported here; modules starting with `_` are private.

Names load on first use (PEP 562), so `import proxyless_mesh` costs a few
milliseconds and grpcio, protobuf and OpenTelemetry load only with the parts
that need them (issue 25).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_PUBLIC: dict[str, str] = {
    "AioAuthorizationServerInterceptor": "proxyless_mesh.integrations",
    "AioMeshChannel": "proxyless_mesh.integrations",
    "AioTelemetryServerInterceptor": "proxyless_mesh.integrations",
    "AsyncMeshTransport": "proxyless_mesh.integrations",
    "AuthorizationMiddleware": "proxyless_mesh.integrations",
    "AuthorizationServerInterceptor": "proxyless_mesh.integrations",
    "Bootstrap": "proxyless_mesh.bootstrap",
    "BootstrapError": "proxyless_mesh.errors",
    "CertificateAuthorityUnavailableError": "proxyless_mesh.errors",
    "ConsulRegistration": "proxyless_mesh.registration",
    "ControlPlaneUnavailableError": "proxyless_mesh.errors",
    "IdentityConfigError": "proxyless_mesh.errors",
    "IdentityError": "proxyless_mesh.errors",
    "IdentityState": "proxyless_mesh.security",
    "MalformedRequestError": "proxyless_mesh.errors",
    "Mesh": "proxyless_mesh.mesh",
    "MeshChannel": "proxyless_mesh.integrations",
    "MeshError": "proxyless_mesh.errors",
    "MeshHealth": "proxyless_mesh.security",
    "MeshRequestError": "proxyless_mesh.errors",
    "MeshRpcError": "proxyless_mesh.errors",
    "MeshTransport": "proxyless_mesh.integrations",
    "NoClusterError": "proxyless_mesh.errors",
    "NoHealthyUpstreamError": "proxyless_mesh.errors",
    "NoRouteError": "proxyless_mesh.errors",
    "OutsideMeshError": "proxyless_mesh.errors",
    "PassthroughBreaker": "proxyless_mesh.resilience",
    "PassthroughCircuitOpenError": "proxyless_mesh.errors",
    "PeerIdentityError": "proxyless_mesh.errors",
    "PolicyConfigError": "proxyless_mesh.errors",
    "Registration": "proxyless_mesh.registration",
    "RegistrationError": "proxyless_mesh.errors",
    "ServiceResolutionError": "proxyless_mesh.errors",
    "TelemetryConfig": "proxyless_mesh.telemetry",
    "TelemetryMiddleware": "proxyless_mesh.integrations",
    "TelemetryServerInterceptor": "proxyless_mesh.integrations",
    "TokenRejectedError": "proxyless_mesh.errors",
    "UnknownServicePortError": "proxyless_mesh.errors",
    "UnsupportedPolicyError": "proxyless_mesh.errors",
    "UpstreamConnectionError": "proxyless_mesh.errors",
    "UpstreamOverflowError": "proxyless_mesh.errors",
    "UpstreamTimeoutError": "proxyless_mesh.errors",
    "WorkloadCertificateExpiredError": "proxyless_mesh.errors",
    "WsgiAuthorizationMiddleware": "proxyless_mesh.integrations",
    "WsgiTelemetryMiddleware": "proxyless_mesh.integrations",
    "peer_identity": "proxyless_mesh.integrations",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


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
