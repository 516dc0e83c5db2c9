"""Every error the library raises, in one place.

One family, rooted at `MeshError`, so an application can catch everything the
mesh raises with one clause, and each subclass says what went wrong and what to
do about it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

if TYPE_CHECKING:
    import grpc


class MeshError(Exception):
    """Root of every error the library raises: catch this to catch them all."""


class BootstrapError(MeshError):
    """The xDS bootstrap (gRPC's JSON format) is missing, unreadable or invalid.

    The message names the source (file, environment variable) and the field, so
    the operator can fix the file `meshctl bootstrap` wrote or the one they edited.
    """


class XdsResourceError(MeshError):
    """Internal: why an xDS resource cannot be used (the reason sent in a NACK).

    The xDS client catches it per resource; the bad resource is NACKed and its
    last good version stays in use, so applications never see this error.
    """


class ControlPlaneUnavailableError(MeshError):
    """Waiting for configuration from the control plane timed out.

    The message names the xDS server and what was awaited (a connection, or the
    listeners still unresolved) so the operator knows whether the server is down
    or merely not serving the requested names.
    """


class MeshRequestError(MeshError, httpx.TransportError):
    """A request the mesh could not send. Subclasses httpx.TransportError so
    code that already handles httpx transport failures handles these too.
    `response_flag` is the Envoy response flag for the failure."""

    response_flag: ClassVar[str] = ""
    # Every Envoy flag the request collected (e.g. ("UF", "URX")); set by the
    # transports when they raise, empty otherwise.
    flags: tuple[str, ...] = ()


class NoRouteError(MeshRequestError):
    """No route of the service matched the request (Envoy flag NR). Check the
    VirtualService's `http[].match` for this host, path, method and headers."""

    response_flag = "NR"


class UnknownServicePortError(NoRouteError):
    """The control plane has no service at this `host:port` and DNS does not
    know the host either (Envoy flag NR), typically a mesh host on a port its
    ServiceEntry does not declare. Under ALLOW_ANY such a request is passed
    through to DNS; rather than DNS's "Name or service not known", this names
    the host and the ports of it this client knows (`mesh_ports`, empty when
    it has used none: `meshctl describe HOST` lists them)."""

    def __init__(
        self, message: str, *, host: str, port: str, mesh_ports: tuple[int, ...], request: object
    ) -> None:
        super().__init__(message, request=request)  # type: ignore[arg-type]
        self.host, self.port, self.mesh_ports = host, port, mesh_ports


class NoHealthyUpstreamError(MeshRequestError):
    """The chosen cluster has no endpoint that can take the request (Envoy
    flag UH): none registered, all unhealthy or draining, or the cluster is
    unknown. The message names the service, the cluster and the reason."""

    response_flag = "UH"


class NoClusterError(NoHealthyUpstreamError):
    """The matched route sends to a cluster the control plane does not have
    (Envoy flag NC, answered 503), typically a VirtualService naming a subset
    no DestinationRule defines yet. A NoHealthyUpstreamError, so handlers of
    that catch it too."""

    response_flag = "NC"


class OutsideMeshError(MeshRequestError):
    """The outbound policy is REGISTRY_ONLY and the host is not a mesh service."""

    response_flag = "NR"


class ServiceResolutionError(MeshRequestError):
    """The mesh could not learn from the control plane, in time, whether the
    host is a mesh service (Envoy flag NC: no cluster). The control plane is
    unreachable and this host was never resolved before."""

    response_flag = "NC"


class UpstreamTimeoutError(MeshRequestError, httpx.TimeoutException):
    """The route's `timeout` (the whole call, retries included) or its
    `retries.perTryTimeout` ran out (Envoy flag UT). A subclass of
    httpx.TimeoutException; the message names the route and the limit."""

    response_flag = "UT"


class UpstreamOverflowError(MeshRequestError):
    """A circuit-breaker limit of the destination (DestinationRule
    `connectionPool`: concurrent requests plus pending ones) is full, so the
    request failed at once rather than queueing (Envoy flag UO)."""

    response_flag = "UO"


class PassthroughCircuitOpenError(UpstreamOverflowError):
    """The circuit breaker of a host outside the mesh is open (the mesh's
    `passthrough_breaker`): the request failed at once, never sent. Flag UO,
    Envoy's flag for a request its circuit breaking refused locally (UF
    would say a connection was tried and failed)."""

    response_flag = "UO"


class UpstreamConnectionError(MeshRequestError):
    """Every try failed without a response: connect failure (UF), reset (UC)
    or refused stream (UR), after the retries the route allows. `flags` holds
    every flag the request collected (e.g. UF and URX); the last httpx error
    is the `__cause__`."""

    response_flag = "UF"


def _define_rpc_error() -> type[MeshError]:
    """Build MeshRpcError on first use: it subclasses grpcio's error types,
    and importing the library must not import grpcio unless the application
    uses gRPC (issue 25: grpcio costs ~0.1 s and ~11 MB)."""
    import grpc

    class MeshRpcError(MeshError, grpc.RpcError, grpc.Call):  # type: ignore[misc]
        """A gRPC call the mesh could not make (library-mode channels). It is a
        `grpc.RpcError` and a `grpc.Call`, like the errors grpcio raises, so
        `except grpc.RpcError as e: e.code()` works unchanged. The Envoy response
        flag is in `response_flag` and in the trailing metadata
        (`x-mesh-response-flags`)."""

        def __init__(self, code: grpc.StatusCode, details: str, response_flag: str) -> None:
            super().__init__(details)
            self._code = code
            self._details = details
            self.response_flag = response_flag

        def code(self) -> grpc.StatusCode:
            return self._code

        def details(self) -> str:
            return self._details

        def initial_metadata(self) -> tuple[tuple[str, str], ...]:
            return ()

        def trailing_metadata(self) -> Any:
            return (("x-mesh-response-flags", self.response_flag),)

        def is_active(self) -> bool:
            return False

        def time_remaining(self) -> float:
            return 0.0

        def cancel(self) -> bool:
            return False

        def add_callback(self, callback: object) -> bool:
            return False

    MeshRpcError.__module__ = __name__
    return MeshRpcError


if TYPE_CHECKING:

    class MeshRpcError(MeshError):
        """What type checkers see; at run time the class is also a
        `grpc.RpcError` and a `grpc.Call` (see `_define_rpc_error`)."""

        response_flag: str

        def __init__(self, code: grpc.StatusCode, details: str, response_flag: str) -> None: ...
        def code(self) -> grpc.StatusCode: ...
        def details(self) -> str: ...
        def trailing_metadata(self) -> Any: ...

else:

    def __getattr__(name: str) -> Any:
        if name != "MeshRpcError":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        cls = globals()["MeshRpcError"] = _define_rpc_error()
        return cls


class IdentityError(MeshError):
    """This workload could not get or keep its mesh identity (its SPIFFE
    certificate from the control plane's CA). Subclasses say why."""


class IdentityConfigError(IdentityError):
    """The identity settings are incomplete: no CA address, no namespace or
    service account in the bootstrap node metadata, or no join token (neither
    `proxyless_mesh.token` in the bootstrap nor PROXYLESS_MESH_TOKEN). The
    message names what is missing and where to put it."""


class TokenRejectedError(IdentityError):
    """The CA refused to sign: the join token is expired, forged, or grants
    another identity than the one asked for, or the renewal certificate is no
    longer trusted. `code` is the gRPC status name (UNAUTHENTICATED or
    PERMISSION_DENIED) and `reason` the CA's explanation; mint a fresh token
    with `meshctl token create --namespace NS --service-account SA`."""

    def __init__(self, message: str, *, code: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class CertificateAuthorityUnavailableError(IdentityError):
    """The CA could not be reached or failed (not a refusal): the workload
    keeps its current certificate, if any, and retries with backoff. The
    message names the CA address and the gRPC status."""


class PeerIdentityError(MeshRequestError):
    """The peer's certificate chain is valid but names another SPIFFE ID than
    the ones expected (or none), so the connection was closed. `expected` and
    `actual` say both; check the destination's `serviceAccount` (ServiceEntry /
    WorkloadEntry) against the identity the peer was issued. A subclass of
    httpx.TransportError through MeshRequestError, so httpx callers catch it
    where they catch connection failures (Envoy flag UF)."""

    response_flag = "UF"

    def __init__(self, expected: Collection[str], actual: str | None, *, peer: str = "") -> None:
        self.expected = frozenset(expected)
        self.actual = actual
        self.peer = peer
        want = ", ".join(sorted(self.expected)) or "any SPIFFE ID"
        where = f" at {peer}" if peer else ""
        super().__init__(f"peer{where} presented {actual or 'no SPIFFE ID'}, expected {want}")


class PolicyConfigError(MeshError, ValueError):
    """An AuthorizationPolicy, RequestAuthentication or RBAC config cannot be
    used. `field` is the dotted path of the offending field (e.g.
    `spec.rules[0].when[1].key`) so the control plane can name it to the
    operator; the policy is rejected as a whole, never partly applied."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UnsupportedPolicyError(PolicyConfigError):
    """The policy uses a field or value the mesh does not enforce (e.g. a CUSTOM
    action, a CEL condition, an unknown `when` key). Rejected rather than
    ignored, because ignoring a condition silently widens or narrows access."""


class MalformedRequestError(MeshError, ValueError):
    """The request path cannot be normalized safely (`%00`, an invalid percent
    escape, control characters, an escaped slash the app would decode
    differently than the policy saw it). Answered with 400, as Envoy does,
    never passed to the app."""


class RegistrationError(MeshError):
    """The control plane (or Consul) refused this workload's registration:
    the message carries its reason (e.g. the join token's identity is not the
    WorkloadGroup's serviceAccount)."""


class WorkloadCertificateExpiredError(IdentityError, MeshRequestError):
    """This workload's own certificate has expired and no CA renewed it in
    time, so the mesh refuses to start an outbound mTLS handshake that every
    peer would reject: failing closed here names the cause instead of a TLS
    alert from the far side. `spiffe_id`, `expired_at` (POSIX seconds) and
    `last_renewal_error` say whose, when and why renewal failed. Renewal keeps
    retrying in the background; requests succeed again as soon as the CA is
    back. Both an IdentityError and (through MeshRequestError) an
    httpx.TransportError (Envoy flag UF)."""

    response_flag = "UF"

    def __init__(
        self, spiffe_id: str, expired_at: float, last_renewal_error: str | None = None
    ) -> None:
        self.spiffe_id = spiffe_id
        self.expired_at = expired_at
        self.last_renewal_error = last_renewal_error
        # A local import: only this message needs datetime.
        from datetime import UTC, datetime

        when = datetime.fromtimestamp(expired_at, UTC).isoformat(timespec="seconds")
        why = f"; last renewal error: {last_renewal_error}" if last_renewal_error else ""
        super().__init__(
            f"the workload certificate of {spiffe_id} expired at {when} and the CA has not "
            f"renewed it: outbound mTLS refused until it does{why}"
        )
