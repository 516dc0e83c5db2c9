"""Workload identity from a Kubernetes ServiceAccount token, checked by the API
server itself (the TokenReview API), as istiod does for its CA.

A Pod mounts a projected token for the mesh's audience (`proxyless-mesh` by
default); the CA sends it to `POST /apis/authentication.k8s.io/v1/tokenreviews`
with that audience. The API server checks the signature, the expiry, the audience
and that the ServiceAccount (and the Pod a bound token names) still exists; the
answer's user `system:serviceaccount:<ns>:<sa>` becomes
`spiffe://<trust domain>/ns/<ns>/sa/<sa>`. Anything else is refused with the API
server's reason. The control plane's own identity needs `create` on
`tokenreviews` (the `system:auth-delegator` ClusterRole grants it).
"""

from __future__ import annotations

from mesh_control_plane.ca.tokens import TokenError
from mesh_control_plane.kube.reflector import Reflectors
from proxyless_mesh.security import SpiffeId

__all__ = ["DEFAULT_AUDIENCE", "TokenReviewer"]

DEFAULT_AUDIENCE = "proxyless-mesh"
_PREFIX = "system:serviceaccount:"


class TokenReviewer:
    """`await review(token)` -> the SPIFFE ID, or TokenError(reason)."""

    def __init__(
        self, watching: Reflectors, trust_domain: str, audience: str = DEFAULT_AUDIENCE
    ) -> None:
        self.watching = watching  # its client: one connection pool per control plane
        self.trust_domain = trust_domain
        self.audience = audience

    async def review(self, token: str) -> SpiffeId:
        client = self.watching.client
        if client is None:
            raise TokenError("the Kubernetes connection is not started")
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        }
        response = await client.post("/apis/authentication.k8s.io/v1/tokenreviews", json=body)
        if not response.is_success:
            raise TokenError(f"TokenReview failed: HTTP {response.status_code}")
        status = response.json().get("status") or {}
        if not status.get("authenticated"):
            raise TokenError(
                f"Kubernetes refused the token: {status.get('error', 'not authenticated')}"
            )
        if self.audience not in (status.get("audiences") or ()):
            raise TokenError(f"the token is not for the audience {self.audience!r}")
        username = str((status.get("user") or {}).get("username", ""))
        if not username.startswith(_PREFIX) or username.count(":") != 3:
            raise TokenError(f"{username!r} is not a ServiceAccount")
        namespace, _, account = username[len(_PREFIX) :].partition(":")
        return SpiffeId(self.trust_domain, namespace, account)
