"""An ADS server that serves a good config on its own and lets a test inject
abuse: whatever DiscoveryResponse it likes, in any number, at any time.

Built on the scripted server of tests/unit/test_xds_client.py: an autopilot
task answers every subscription change with the good resources, and the test
pushes hostile responses into the same stream."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from test_xds_client import (
    CDS,
    EDS,
    LDS,
    RDS,
    ScriptedAds,
    ServerStream,
    assignment,
    cluster,
    listener,
    packed,
    routes,
)

__all__ = ["CDS", "EDS", "LDS", "RDS", "Autopilot", "ScriptedAds", "good_resources", "packed"]


def good_resources() -> dict[str, dict[str, Any]]:
    """p.mesh:80 -> r1 -> c1 (80) / c2 (20) -> endpoints."""
    return {
        LDS: {"p.mesh:80": listener("p.mesh:80", "r1")},
        RDS: {"r1": routes("r1", {"c1": 80, "c2": 20})},
        CDS: {"c1": cluster("c1"), "c2": cluster("c2")},
        EDS: {"c1": assignment("c1", 8081), "c2": assignment("c2", 8082)},
    }


class Autopilot:
    """Answers requests on one stream: a request whose names differ from the
    last answered ones (or that starts the stream) gets the good resources;
    ACKs and NACKs are recorded for the test."""

    def __init__(self, stream: ServerStream, resources: dict[str, dict[str, Any]]) -> None:
        self.stream = stream
        self.resources = resources
        self.version = 1
        self.answered: dict[str, tuple[str, ...]] = {}
        self.nacks: list[Any] = []
        self.silent: set[str] = set()  # types whose subscription changes go unanswered
        self.acks: list[Any] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            req = await self.stream.requests.get()
            if req.HasField("error_detail"):
                self.nacks.append(req)
            elif req.response_nonce:
                self.acks.append(req)
            names = tuple(sorted(req.resource_names))
            if req.type_url in self.silent:
                continue
            if req.type_url in self.resources and self.answered.get(req.type_url) != names:
                self.answered[req.type_url] = names
                self.send_good(req.type_url, names)

    def send_good(self, type_url: str, names: tuple[str, ...] | None = None) -> None:
        table = self.resources.get(type_url, {})
        wanted = names if names is not None else self.answered.get(type_url, ())
        self.stream.respond(type_url, str(self.version), *(table[n] for n in wanted if n in table))

    def send(self, type_url: str, version: str, *resources: Any, nonce: bool = True) -> str | None:
        """A raw response; returns its nonce (`nonce=False` sends one without)."""
        if nonce:
            return self.stream.respond(type_url, version, *resources)
        from envoy.service.discovery.v3 import discovery_pb2

        self.stream.outbox.put_nowait(
            discovery_pb2.DiscoveryResponse(
                type_url=type_url,
                version_info=version,
                resources=[r if isinstance(r, any_pb2.Any) else packed(r) for r in resources],
            )
        )
        return None

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.wait([self.task])
