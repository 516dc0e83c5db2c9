"""The xDS client when the control plane is not there (issue 17): an outage is
one WARNING however many retries fail, its end one INFO; a client with a cached
config is ready as soon as every server refused, not after the timeout.

The server is the scripted ADS server of test_xds_client on a port this test
holds (processes.reserved_port: refused until the server binds it beside us)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from processes import reserved_port
from test_xds_client import RDS, STEP, ScriptedAds, ServerStream, XdsClient, bootstrap, resolve_all

LOGGER = "proxyless_mesh.xds_client"


@asynccontextmanager
async def ads_on(port: int) -> AsyncIterator[ScriptedAds]:
    servicer = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    await server.start()
    try:
        yield servicer
    finally:
        await server.stop(None)


class ShortSleeps:
    """Real but short backoff sleeps, counted."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, delay: float) -> None:
        self.count += 1
        await asyncio.sleep(0.01)


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition the client offers no event for (log lines, sleeps)."""
    try:
        async with asyncio.timeout(STEP):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"no {what} within {STEP}s")


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == LOGGER
        and any(m in r.getMessage() for m in ("cannot reach the control plane", "reachable again"))
    ]


async def test_an_outage_is_one_warning_and_its_end_one_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    sleeps = ShortSleeps()
    with reserved_port() as port:
        client = XdsClient(bootstrap(f"127.0.0.1:{port}"), on_update=lambda s: None, sleep=sleeps)
        try:
            await _an_outage_and_back(client, sleeps, port, caplog)
        finally:
            await client.close()


async def _an_outage_and_back(
    client: XdsClient, sleeps: ShortSleeps, port: int, caplog: pytest.LogCaptureFixture
) -> None:
    await client.start()
    await _until(lambda: sleeps.count >= 5, "five failed rounds")
    assert [level for level, _ in _outage_lines(caplog)] == [logging.WARNING]
    warning = _outage_lines(caplog)[0][1]
    assert f"127.0.0.1:{port}" in warning and "no config yet" in warning
    async with ads_on(port) as servicer:
        stream = await servicer.next_stream()
        await client.wait_connected(STEP)
        await _hello(stream)
        await resolve_all_after_watch(client, stream)
        lines = _outage_lines(caplog)
        assert [level for level, _ in lines] == [logging.WARNING, logging.INFO], lines
        stream.close()  # the control plane goes again: the next outage is one more pair
    await _until(lambda: len(_outage_lines(caplog)) == 3, "the second outage's WARNING")
    count = sleeps.count
    await _until(lambda: sleeps.count >= count + 5, "five more failed rounds")
    lines = _outage_lines(caplog)
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO, logging.WARNING]
    assert "serving the last good config" in lines[2][1]


async def _hello(stream: ServerStream) -> None:
    """A client that subscribes to nothing yet still names itself on a new
    stream: one RDS request with no names (never answered here: the later
    RDS subscription must not wait for it)."""
    hello = await stream.request(RDS)
    assert hello.node.id == "node-1" and list(hello.resource_names) == []


async def resolve_all_after_watch(client: XdsClient, stream: object) -> None:
    watch = asyncio.create_task(client.watch(["p.mesh:80"], timeout=STEP))
    await resolve_all(stream)  # type: ignore[arg-type]
    await asyncio.wait_for(watch, STEP)


async def test_a_cached_config_is_ready_when_every_server_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    with reserved_port() as port:
        uri = f"127.0.0.1:{port}"
        async with ads_on(port) as servicer:
            first = XdsClient(bootstrap(uri), on_update=lambda state: None)
            await first.start()
            stream = await servicer.next_stream()
            await first.wait_connected(STEP)
            await _hello(stream)
            await resolve_all_after_watch(first, stream)
            await first.close()  # flushes the cache
        assert not any(r.levelno >= logging.WARNING for r in caplog.records)  # a quiet start

        second = XdsClient(bootstrap(uri), on_update=lambda state: None)
        try:
            await second.start()
            assert second.restored_from_cache
            started = time.monotonic()
            assert not await second.wait_ready(30.0, warm_wait=10.0)
            assert time.monotonic() - started < 2.0  # refused at once: no waiting
            assert "p.mesh:80" in second.state.listeners
            (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert "serving the cached config written" in warning.getMessage()
            async with ads_on(port) as servicer:
                await servicer.next_stream()
                await second.wait_connected(STEP)
            assert [m for _, m in _outage_lines(caplog) if "reachable again" in m] != []
        finally:
            await second.close()
