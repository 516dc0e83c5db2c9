"""Every error the library raises, in one place.

One family, rooted at `MeshError`, so an application can catch everything the
mesh raises with one clause, and each subclass says what went wrong and what to
do about it.
"""

from __future__ import annotations

from typing import ClassVar

import httpx


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


class NoRouteError(MeshRequestError):
    """No route of the service matched the request (Envoy flag NR). Check the
    VirtualService's `http[].match` for this host, path, method and headers."""

    response_flag = "NR"


class NoHealthyUpstreamError(MeshRequestError):
    """The chosen cluster has no endpoint that can take the request (Envoy
    flag UH): none registered, all unhealthy or draining, or the cluster is
    unknown. The message names the service, the cluster and the reason."""

    response_flag = "UH"


class OutsideMeshError(MeshRequestError):
    """The outbound policy is REGISTRY_ONLY and the host is not a mesh service."""

    response_flag = "NR"


class ServiceResolutionError(MeshRequestError):
    """The mesh could not learn from the control plane, in time, whether the
    host is a mesh service (Envoy flag NC: no cluster). The control plane is
    unreachable and this host was never resolved before."""

    response_flag = "NC"
