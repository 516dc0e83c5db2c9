"""Inbound policy: request hygiene and normalization, JWT authentication and RBAC.

`PolicySet` is the compiled, immutable policy of one workload; the
integrations (ASGI, WSGI, gRPC server) call `PolicySet.check` per request.
`authorization_policies_to_rbac` and `request_authentications_to_jwt` turn
Istio YAML into the RBAC model the same way istiod does; `rbac_to_proto` /
`rbac_from_proto` convert that model to and from Envoy's RBAC protobufs.
"""

from proxyless_mesh.policy._engine import (
    BAD_REQUEST_BODY,
    DENIED_BODY,
    NOT_READY_BODY,
    UNAUTHENTICATED_BODY,
    Decision,
    InboundRequest,
    PolicySet,
    join_headers,
)
from proxyless_mesh.policy._errors import (
    MalformedRequestError,
    PolicyConfigError,
    UnsupportedPolicyError,
)
from proxyless_mesh.policy._istio import (
    authorization_policies_to_rbac,
    authorization_policy_to_rbac,
    request_authentications_to_jwt,
    selects_workload,
)
from proxyless_mesh.policy._normalize import PathNormalization, normalize_host, normalize_path

__all__ = [
    "BAD_REQUEST_BODY",
    "DENIED_BODY",
    "NOT_READY_BODY",
    "UNAUTHENTICATED_BODY",
    "Decision",
    "InboundRequest",
    "MalformedRequestError",
    "PathNormalization",
    "PolicyConfigError",
    "PolicySet",
    "UnsupportedPolicyError",
    "authorization_policies_to_rbac",
    "authorization_policy_to_rbac",
    "join_headers",
    "normalize_host",
    "normalize_path",
    "request_authentications_to_jwt",
    "selects_workload",
]
