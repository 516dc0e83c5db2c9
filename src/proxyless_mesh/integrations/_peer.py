"""The caller's verified SPIFFE ID as a web app sees it, ASGI or WSGI alike.

The mesh's servers put it in two places: `serve_asgi` in the ASGI `tls`
extension (`scope["extensions"]["tls"]["spiffe_id"]`, beside uvicorn-style
`client_cert_chain`), the gunicorn worker and the WSGI server in
`environ["proxyless_mesh.peer_principal"]`. One function reads either, so an
app need not know which server runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxyless_mesh.integrations._asgi import tls_peer_principal
from proxyless_mesh.integrations._wsgi import PEER_PRINCIPAL_KEY

__all__ = ["peer_identity"]


def peer_identity(scope_or_environ: Mapping[str, Any]) -> str | None:
    """The peer's SPIFFE ID from an ASGI scope or a WSGI environ; None over
    plaintext (or a server that does not verify client certificates)."""
    if PEER_PRINCIPAL_KEY in scope_or_environ:
        principal = scope_or_environ[PEER_PRINCIPAL_KEY]
        return str(principal) if principal else None
    tls = (scope_or_environ.get("extensions") or {}).get("tls")
    if not tls:
        return None
    spiffe_id = tls.get("spiffe_id")
    if spiffe_id:
        return str(spiffe_id)
    return tls_peer_principal(dict(scope_or_environ))
