"""Inbound policy: request hygiene and normalization, JWT authentication and RBAC.

`PolicySet` is the compiled, immutable policy of one workload; the
integrations (ASGI, WSGI, gRPC server) call `PolicySet.check` per request.
The engine works on the plain RBAC model (`proxyless_mesh.model`) only: the
control plane translates Istio YAML into that model and to protobufs, and the
xDS client decodes it, so nothing here touches protobufs.
"""

from proxyless_mesh.policy._engine import (
    BAD_REQUEST_BODY,
    DENIED_BODY,
    NOT_READY_BODY,
    REFUSAL_BODIES,
    UNAUTHENTICATED_BODY,
    Decision,
    InboundRequest,
    PolicySet,
    ShadowResult,
    join_headers,
)
from proxyless_mesh.policy._errors import (
    MalformedRequestError,
    PolicyConfigError,
    UnsupportedPolicyError,
)
from proxyless_mesh.policy._ext_authz import (
    AuthzVerdict,
    after_verdict,
    check_headers,
    error_verdict,
    http_check,
    http_verdict,
)
from proxyless_mesh.policy._normalize import (
    PathNormalization,
    app_path,
    normalize_host,
    normalize_path,
)
from proxyless_mesh.policy._peer import spiffe_id_from_names, spiffe_id_from_pem

__all__ = [
    "BAD_REQUEST_BODY",
    "DENIED_BODY",
    "NOT_READY_BODY",
    "REFUSAL_BODIES",
    "UNAUTHENTICATED_BODY",
    "AuthzVerdict",
    "Decision",
    "InboundRequest",
    "MalformedRequestError",
    "PathNormalization",
    "PolicyConfigError",
    "PolicySet",
    "ShadowResult",
    "UnsupportedPolicyError",
    "after_verdict",
    "app_path",
    "check_headers",
    "error_verdict",
    "http_check",
    "http_verdict",
    "join_headers",
    "normalize_host",
    "normalize_path",
    "spiffe_id_from_names",
    "spiffe_id_from_pem",
]
