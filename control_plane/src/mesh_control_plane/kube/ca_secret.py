"""The CA's files (roots, their keys, the join-token key) shared through one
Kubernetes Secret, so that every control plane replica signs with the same root
and accepts the same join tokens.

At start, before the CA opens its directory: if the Secret exists, its files are
written into the CA directory (0600); if not, the CA directory is made as usual
and uploaded as the Secret. Two replicas starting together race on the create: the
loser (409 Conflict) takes the winner's files.

While running (`CaSecretSync`): a root rotated at the leader (SIGUSR1, schedule) is written
to the Secret at once, unless the Secret already lists a root this replica does
not know (two replicas rotated together: the later one drops its own and takes
the other's; the update carries the read's resourceVersion, so the API server
refuses one that raced it),
and every replica reads the Secret every `interval` seconds (10 s): one that lists a
root this replica does not know is taken, files and roots.json, and the CA reloads;
one that lacks a root of this replica (the update after the rotation failed) is
updated again.
A new root only starts signing after the longest leaf lifetime (hours), so the poll
delay is far inside that window. Retirement needs no sharing: each replica retires
a root at the same recorded time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from mesh_control_plane.ca.authority import STATE_FILE
from mesh_control_plane.kube.client import KubeConfigError, KubeConnection
from proxyless_mesh.security import ensure_private_dir, write_private_file

log = logging.getLogger(__name__)

__all__ = ["CaSecretSync", "share_ca_dir"]


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
            data = _encoded(ca_dir)
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
        _write(secret, ca_dir, response.json().get("data") or {})
    log.info("CA files loaded from the Secret %s", secret)
    return "loaded"


class CaSecretSync:
    """Keeps the replicas' roots together through the Secret (see the module)."""

    def __init__(
        self,
        connection: KubeConnection,
        secret: str,
        ca_dir: Path,
        reload: Callable[[], None],
        *,
        interval: float = 10.0,
    ) -> None:
        self.connection, self.secret, self.ca_dir = connection, secret, ca_dir
        self._reload = reload
        self.interval = interval
        namespace, _, name = secret.partition("/")
        self._url = f"/api/v1/namespaces/{namespace}/secrets/{name}"
        self._tasks: set[asyncio.Task[bool]] = set()

    def publish_soon(self) -> None:
        """After a rotation here (on the event loop): write the CA dir to the Secret."""
        task = asyncio.get_running_loop().create_task(self.publish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def publish(self, attempts: int = 3) -> bool:
        """The CA dir's files replace the Secret's, if nobody changed it since we
        read it. False (and logged) when the API server refused or failed."""
        try:
            async with self.connection.async_client() as client:
                current = await client.get(self._url)
                current.raise_for_status()
                body = current.json()
                if self._unknown_roots(body.get("data") or {}):
                    log.error(
                        "CA Secret %s has a root rotated at another replica meanwhile: "
                        "this replica's rotation is dropped, it takes that root instead",
                        self.secret,
                    )
                    return False
                body["data"] = _encoded(self.ca_dir)  # keeps metadata.resourceVersion
                response = await client.put(self._url, json=body)
        except httpx.HTTPError as exc:
            log.error("CA Secret %s not updated after the rotation: %s", self.secret, exc)
            return False
        if response.status_code == 409 and attempts > 1:
            log.warning("CA Secret %s changed while it was being updated: retried", self.secret)
            return await self.publish(attempts - 1)
        if not response.is_success:
            log.error("CA Secret %s not updated: HTTP %s", self.secret, response.status_code)
            return False
        log.info("CA Secret %s updated with the rotated roots", self.secret)
        return True

    async def poll(self) -> bool:
        """Take the Secret's files when it lists a root unknown here; True if
        taken. When this replica has a root the Secret lacks (its update after a
        rotation failed), the update is tried again."""
        async with self.connection.async_client() as client:
            response = await client.get(self._url)
            response.raise_for_status()
        data = response.json().get("data") or {}
        unknown = self._unknown_roots(data)
        if not unknown:
            if self._missing_roots(data):
                log.warning("CA Secret %s lacks a root rotated here: updated again", self.secret)
                await self.publish()
            return False
        _write(self.secret, self.ca_dir, data)
        for stale in self.ca_dir.glob("root-*.pem"):  # a rotation of ours that lost
            if stale.name not in data:
                stale.unlink()
        self._reload()
        log.info("CA roots %s taken from the Secret %s", sorted(unknown), self.secret)
        return True

    def _unknown_roots(self, data: Mapping[str, str]) -> set[str]:
        return self._theirs(data) - self._ours()

    def _missing_roots(self, data: Mapping[str, str]) -> set[str]:
        return self._ours() - self._theirs(data)

    def _theirs(self, data: Mapping[str, str]) -> set[str]:
        return _root_ids(base64.b64decode(data.get(STATE_FILE, "")))

    def _ours(self) -> set[str]:
        state = self.ca_dir / STATE_FILE
        return _root_ids(state.read_bytes() if state.exists() else b"")

    async def run(self) -> None:
        """Poll until cancelled; a failing API server is retried at the next tick."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except (httpx.HTTPError, KubeConfigError, ValueError) as exc:
                log.warning("CA Secret %s not read: %s", self.secret, exc)


def _encoded(ca_dir: Path) -> dict[str, str]:
    return {
        f.name: base64.b64encode(f.read_bytes()).decode()
        for f in sorted(ca_dir.iterdir())
        if f.is_file()
    }


def _write(secret: str, ca_dir: Path, data: Mapping[str, str]) -> None:
    ensure_private_dir(ca_dir)
    for file in data:
        if "/" in file or file.startswith("."):
            raise KubeConfigError(f"CA Secret {secret}: unexpected key {file!r}")
    # roots.json last: it names files that must be there when it is read
    for file in sorted(data, key=lambda f: f == STATE_FILE):
        write_private_file(ca_dir / file, base64.b64decode(data[file]))


def _root_ids(state: bytes) -> set[str]:
    if not state:
        return set()
    doc: Any = json.loads(state)
    return {str(root["id"]) for root in doc.get("roots", ())}
