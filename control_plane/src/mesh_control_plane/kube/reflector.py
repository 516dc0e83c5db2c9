"""List-then-watch of one Kubernetes collection, as client-go's reflector does it.

A full list (paged with `limit`/`continue`) gives the items and a resourceVersion;
a watch from that version (`allowWatchBookmarks`, so a quiet collection still moves
its version forward) streams ADDED / MODIFIED / DELETED events. A watch that ends
(its `timeoutSeconds`, a dropped connection, the API server restarting) resumes
from the last version seen; only a 410 Gone (that version is compacted away) makes
a new list. A new list replaces the items in one step, after it completed: nothing
is ever emptied on the way, and a list that fails leaves the last good items
serving. Errors back off exponentially with jitter.

Items are kept transformed (`transform(obj)`, None to skip): the registry keeps the
few fields it needs, not whole objects (managedFields alone is most of a Pod).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import httpx

from mesh_control_plane.kube.client import KubeConnection

log = logging.getLogger(__name__)

__all__ = ["Reflector", "Reflectors", "object_key"]

T = TypeVar("T")


class _Gone(Exception):
    """410: the resourceVersion is too old; list again."""


class _WatchError(Exception):
    """An ERROR event other than 410 in a watch stream."""


def object_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    return f"{namespace}/{meta.get('name', '')}" if namespace else str(meta.get("name", ""))


class Reflector(Generic[T]):
    """Keeps `items` (key -> transformed object) equal to the collection at `path`."""

    def __init__(
        self,
        path: str,
        transform: Callable[[Mapping[str, Any]], T | None],
        on_change: Callable[[], None],
        *,
        page_size: int = 500,
        watch_timeout: int = 300,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
    ) -> None:
        self.path = path
        self.transform = transform
        self.on_change = on_change
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.items: dict[str, T] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()  # set after the first complete list
        self.failing = False
        self.errors = 0
        self.lists = 0
        self.last_error = ""

    async def run(self, client: httpx.AsyncClient) -> None:
        """Forever: list when needed, watch, resume; cancel to stop."""
        delay = self.backoff_initial
        while True:
            try:
                if not self.resource_version:
                    await self._list(client)
                    delay = self.backoff_initial
                await self._watch(client)
                delay = self.backoff_initial
            except _Gone:
                log.info(
                    "%s: resourceVersion %s expired, listing again",
                    self.path,
                    self.resource_version,
                )
                self.resource_version = ""
            except (httpx.HTTPError, ValueError, KeyError, TypeError, _WatchError) as exc:
                self._failed(exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff_max)

    def status(self) -> dict[str, Any]:
        return {
            "items": len(self.items),
            "resourceVersion": self.resource_version,
            "synced": self.synced.is_set(),
            "stale": self.failing,
            "lists": self.lists,
            "errors": self.errors,
            "last_error": self.last_error,
        }

    async def _list(self, client: httpx.AsyncClient) -> None:
        items: dict[str, T] = {}
        params = {"limit": str(self.page_size)}
        while True:
            response = await client.get(self.path, params=params)
            if response.status_code == 410:  # the continue token expired
                raise _Gone
            response.raise_for_status()
            body = response.json()
            for obj in body.get("items") or ():
                value = self.transform(obj)
                if value is not None:
                    items[object_key(obj)] = value
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                break
            params = {"limit": str(self.page_size), "continue": meta["continue"]}
        self.lists += 1
        changed = items != self.items
        self.items = items
        self.resource_version = str(meta["resourceVersion"])
        self._recovered()
        self.synced.set()
        if changed:
            self.on_change()

    async def _watch(self, client: httpx.AsyncClient) -> None:
        params = {
            "watch": "1",
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_timeout),
        }
        timeout = httpx.Timeout(30.0, read=self.watch_timeout + 30.0)
        async with client.stream("GET", self.path, params=params, timeout=timeout) as response:
            if response.status_code == 410:
                raise _Gone
            response.raise_for_status()
            self._recovered()
            async for line in response.aiter_lines():
                if line:
                    self._event(json.loads(line))

    def _event(self, event: Mapping[str, Any]) -> None:
        kind, obj = event["type"], event["object"]
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone
            raise _WatchError(f"{obj.get('code')}: {obj.get('message')}")
        version = str(obj["metadata"]["resourceVersion"])
        if kind == "BOOKMARK":
            self.resource_version = version
            return
        key = object_key(obj)
        value = None if kind == "DELETED" else self.transform(obj)
        if value is None:
            changed = self.items.pop(key, None) is not None
        else:
            changed = self.items.get(key) != value
            self.items[key] = value
        self.resource_version = version
        if changed:
            self.on_change()

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self.last_error = repr(exc)
        if not self.failing:
            self.failing = True
            log.warning(
                "Kubernetes %s: list/watch failing (%r); keeping the %d last known items, "
                "retrying with backoff",
                self.path,
                exc,
                len(self.items),
            )

    def _recovered(self) -> None:
        if self.failing:
            self.failing = False
            log.warning("Kubernetes %s: reachable again", self.path)


class Reflectors:
    """Several reflectors run on one client of one connection: start, wait, stop."""

    def __init__(self, connection: KubeConnection, reflectors: Sequence[Reflector[Any]]) -> None:
        self.connection = connection
        self.reflectors = tuple(reflectors)
        self.client: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.client = self.connection.async_client()
        self._tasks = [
            asyncio.create_task(r.run(self.client), name=f"kube {r.path}") for r in self.reflectors
        ]

    async def wait_synced(self) -> None:
        await asyncio.gather(*(r.synced.wait() for r in self.reflectors))

    def failing(self) -> bool:
        return any(r.failing for r in self.reflectors)

    async def stop(self, *others: asyncio.Task[Any]) -> None:
        """Cancel the reflectors (and `others`, tasks that use the client), then
        close the client."""
        tasks = [*self._tasks, *others]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._tasks = []
        if self.client is not None:
            await self.client.aclose()
            self.client = None
