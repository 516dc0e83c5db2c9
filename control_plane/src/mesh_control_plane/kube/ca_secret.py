"""The CA's files (roots, their keys, the join-token key) shared through one
Kubernetes Secret, so that every control plane replica signs with the same root
and accepts the same join tokens.

At start, before the CA opens its directory: if the Secret exists, its files are
written into the CA directory (0600); if not, the CA directory is made as usual
and uploaded as the Secret. Two replicas starting together race on the create: the
loser (409 Conflict) takes the winner's files. Root rotation writes new files in
one replica only: it is not shared yet (see the README).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from pathlib import Path

import httpx

from mesh_control_plane.kube.client import KubeConfigError, KubeConnection
from proxyless_mesh.security import ensure_private_dir, write_private_file

log = logging.getLogger(__name__)

__all__ = ["share_ca_dir"]


def share_ca_dir(
    connection: KubeConnection, secret: str, ca_dir: Path, generate: Callable[[], object]
) -> str:
    """Make `ca_dir` hold the Secret `namespace/name`'s files (`generate()` makes
    them when there is no Secret yet). Returns "loaded" or "created"."""
    try:
        return _share(connection, secret, ca_dir, generate)
    except httpx.HTTPError as exc:
        raise KubeConfigError(f"CA Secret {secret}: {exc}") from exc


def _share(
    connection: KubeConnection, secret: str, ca_dir: Path, generate: Callable[[], object]
) -> str:
    namespace, _, name = secret.partition("/")
    collection = f"/api/v1/namespaces/{namespace}/secrets"
    with connection.sync_client() as client:
        response = client.get(f"{collection}/{name}")
        if response.status_code == 404:
            generate()
            data = {
                f.name: base64.b64encode(f.read_bytes()).decode()
                for f in sorted(ca_dir.iterdir())
                if f.is_file()
            }
            body = {
                "metadata": {"name": name, "namespace": namespace},
                "type": "Opaque",
                "data": data,
            }
            created = client.post(collection, json=body)
            if created.is_success:
                log.info("CA files uploaded to the Secret %s", secret)
                return "created"
            if created.status_code != 409:  # 409: another replica was first
                created.raise_for_status()
            response = client.get(f"{collection}/{name}")
        response.raise_for_status()
        ensure_private_dir(ca_dir)
        for file, content in (response.json().get("data") or {}).items():
            if "/" in file or file.startswith("."):
                raise KubeConfigError(f"CA Secret {secret}: unexpected key {file!r}")
            write_private_file(ca_dir / file, base64.b64decode(content))
    log.info("CA files loaded from the Secret %s", secret)
    return "loaded"
