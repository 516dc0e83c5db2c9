"""GET a JSON document from the control plane's admin endpoint (for the
commands that read the running control plane)."""

from __future__ import annotations

import http.client
import json
from typing import Any

from mesh_control_plane.app import split_address


class AdminError(Exception):
    """The admin endpoint answered, but not with 200; `message` is its error."""


def get_json(admin_address: str, target: str, timeout: float = 5.0) -> Any:
    """GET `target` (path and query); OSError when unreachable, AdminError
    when it answers with an error, ValueError for a malformed address/body."""
    host, port = split_address(admin_address)
    conn = http.client.HTTPConnection(host.strip("[]"), port, timeout=timeout)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    payload = json.loads(body)
    if response.status != 200:
        error = payload.get("error") if isinstance(payload, dict) else None
        raise AdminError(f"GET {target} answered {response.status}: {error or body[:200]!r}")
    return payload
