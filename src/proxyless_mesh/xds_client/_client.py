"""The asyncio/gRPC shell around `AdsProtocol`: one ADS stream, reconnected
forever, publishing an `XdsState` after each applied update.

Several `xds_servers` fail over as gRPC's A71 says: each (re)connection tries them
in the bootstrap's order and uses the first that answers; while on a fallback
server, the primary's channel keeps trying to connect, and the stream moves back
to the primary as soon as that channel is READY. Backoff applies only after every
server failed in a row. The last good config stays published throughout.

Logs: an outage (every server failed in a row) is one WARNING, the connection
that ends it one INFO; the retries in between are DEBUG.

The stream goes over `h2` (grpc_wire: no grpcio in the process) when it is
installed, else over a plain `grpc.aio` channel (_transport.py); either way
it never passes through the library's interceptors: meshing the connection
that delivers the mesh's config would make it depend on itself (and
trace/retry its own control traffic).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.errors import ControlPlaneUnavailableError
from proxyless_mesh.grpc_wire import GrpcCallError
from proxyless_mesh.xds_client._backoff import Backoff, WaitStrategy, default_wait
from proxyless_mesh.xds_client._codec import parser
from proxyless_mesh.xds_client._delta import DeltaAdsProtocol, wants_delta
from proxyless_mesh.xds_client._disk_cache import ConfigCache
from proxyless_mesh.xds_client._node import build_node, node_fields
from proxyless_mesh.xds_client._protocol import AdsProtocol
from proxyless_mesh.xds_client._state import ResourceStatus, XdsState
from proxyless_mesh.xds_client._transport import AdsCall, Transport, open_transport
from proxyless_mesh.xds_client._types import ResourceType

__all__ = ["XdsClient", "build_node", "node_fields"]  # the node: see _node.py

log = logging.getLogger("proxyless_mesh.xds_client")

_PRIMARY_BACK = object()
#: Until the first stream, reconnect at least this often (seconds, jittered below).
START_RECONNECT_CAP = 2.0


async def _read_unless(call: AdsCall, back: asyncio.Future[None] | None) -> Any:
    """`call.read()`, or _PRIMARY_BACK when `back` completes first."""
    if back is None:
        return await call.read()
    read = asyncio.ensure_future(call.read())
    await asyncio.wait({read, back}, return_when=asyncio.FIRST_COMPLETED)
    if read.done():
        return read.result()
    read.cancel()
    return _PRIMARY_BACK


class XdsClient:
    """Follows the listeners it is asked to watch, and everything they reference,
    over one ADS stream: State of the World, or Delta when the bootstrap's
    `proxyless_mesh.ads` is "delta" (_delta.py)."""

    def __init__(
        self,
        bootstrap: Bootstrap,
        *,
        on_update: Callable[[XdsState], None],
        user_agent_name: str = "proxyless-mesh",
        wait: WaitStrategy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        transport: str | None = None,
    ) -> None:
        self._servers = [s.server_uri for s in bootstrap.xds_servers]
        self._server_uri = self._servers[0]  # the one in use (or last tried)
        self._transport_choice = transport  # "h2" / "grpcio"; None: _transport.py decides
        self._user_agent = user_agent_name
        self._channels: list[Transport] = []
        node = node_fields(bootstrap, user_agent_name)
        protocol = DeltaAdsProtocol if wants_delta(bootstrap.proxyless_mesh) else AdsProtocol
        self._protocol = protocol(node)
        self._on_update = on_update
        self._backoff = Backoff(wait or default_wait())
        self._sleep = sleep
        self._channel: Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[Any] | None = None  # the live stream's, else None
        self._connected = False
        self._closed = False
        self._last_error = "no connection attempted yet"
        self._got_response = False  # on the current stream: a healthy server resets backoff
        self._got_any_response = False  # since start: the cached config was replaced
        self._ever_connected = False
        self._changed = asyncio.Event()  # replaced after each set: one per change
        self._expiry: asyncio.TimerHandle | None = None  # the does-not-exist timer
        # The last good config on disk: a restart while the control plane is
        # down starts from it instead of from nothing (bootstrap can turn it off).
        self._cache = ConfigCache.from_bootstrap(bootstrap)
        self.restored_from_cache = False
        self._failed_rounds = 0  # every server failed in a row, since start
        self._outage_since: float | None = None  # monotonic, while in a logged outage

    @property
    def state(self) -> XdsState:
        return self._protocol.state

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def server_uri(self) -> str:
        return self._server_uri

    async def start(self) -> None:
        """Start the stream task on the running loop; returns at once."""
        if self._closed:
            raise RuntimeError("XdsClient is closed")
        if self._task is not None:
            return
        # Plain channels on purpose: see the module docstring.
        self._channels = [
            open_transport(u, self._user_agent, self._transport_choice) for u in self._servers
        ]
        self._channel = self._channels[0]
        if self._cache is not None and self._cache.restore(self._protocol):
            self.restored_from_cache = True
            self._publish()
        self._task = asyncio.create_task(self._run(), name=f"xds-ads {self._server_uri}")

    async def close(self) -> None:
        """Stop the stream and close the channel; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        self._arm_expiry()  # the stream is gone: cancels it
        if self._cache is not None:
            self._cache.flush()
        for channel in self._channels:
            await channel.close()
        self._set_connected(False)

    async def watch(self, listener_names: Iterable[str], *, timeout: float | None) -> None:
        """Subscribe to listeners (kept until `unwatch`) and wait until each is
        resolved: present with its routes, clusters and endpoints, or known not
        to exist. Raises ControlPlaneUnavailableError after `timeout` seconds."""
        names = list(dict.fromkeys(listener_names))
        self._send(self._protocol.watch(names))
        try:
            async with asyncio.timeout(timeout):
                while any(not self.state.is_resolved(n) for n in names):
                    await self._changed.wait()
        except TimeoutError:
            raise ControlPlaneUnavailableError(self._unresolved_message(names, timeout)) from None

    async def watch_inbound(self, names: Iterable[str], *, timeout: float | None) -> None:
        """Subscribe to server (inbound) listeners by name - the bootstrap's
        `server_listener_resource_name_template` with "IP:PORT", as gRPC asks
        (gRFC A36) - kept until `unwatch`, and wait until each is in
        `state.inbound` or known not to exist. Raises
        ControlPlaneUnavailableError after `timeout` seconds."""
        wanted = list(dict.fromkeys(names))
        self._send(self._protocol.watch(wanted, inbound=True))
        try:
            async with asyncio.timeout(timeout):
                while not all(self.state.inbound_resolved(n) for n in wanted):
                    await self._changed.wait()
        except TimeoutError:
            missing = [n for n in wanted if not self.state.inbound_resolved(n)]
            errors = [f"{s.name}: {s.error}" for s in self.resource_status() if s.error]
            text = f"xDS server {self._server_uri} did not send server listeners {missing}"
            text += f" within {timeout:g}s" if timeout is not None else ""
            if errors:
                text += f"; rejected: {'; '.join(errors)}"
            raise ControlPlaneUnavailableError(text) from None

    def unwatch(self, listener_names: Iterable[str]) -> None:
        """Unsubscribe listeners and whatever only they referenced."""
        requests, changed = self._protocol.unwatch(listener_names)
        self._send(requests)
        if changed:
            self._publish()

    async def wait_connected(self, timeout: float | None) -> None:
        """Wait until the ADS stream is up (None: however long it takes);
        raises ControlPlaneUnavailableError."""
        try:
            async with asyncio.timeout(timeout):
                while not self._connected:
                    await self._changed.wait()
        except TimeoutError:
            raise ControlPlaneUnavailableError(
                f"no ADS stream to xDS server {self._server_uri} after {timeout:g}s "
                f"(last error: {self._last_error}); is the control plane running there?"
            ) from None

    async def wait_ready(self, timeout: float, *, warm_wait: float) -> bool:
        """Wait for the ADS stream on start. Without a restored cache, as
        wait_connected(timeout) (raises ControlPlaneUnavailableError). With one,
        return as soon as the stream is up or every server failed once, at
        most `warm_wait` seconds: a workload with a cached config does not wait
        for a control plane that is not there. Returns whether connected."""
        if not self.restored_from_cache:
            await self.wait_connected(timeout)
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(timeout, warm_wait)):
                while not self._connected and not self._failed_rounds:
                    await self._changed.wait()
        return self._connected

    def resource_status(self) -> list[ResourceStatus]:
        """Per type and subscribed name: version, ACKED/NACKED/..., error."""
        return self._protocol.resource_status()

    # -- the stream --------------------------------------------------------------

    async def _run(self) -> None:
        """Reconnect forever; the last good state stays published meanwhile."""
        index = 0
        while True:
            self._got_response = False
            self._channel, self._server_uri = self._channels[index], self._servers[index]
            try:
                await self._run_stream(primary=self._channels[0] if index else None)
            except GrpcCallError as exc:
                self._last_error = f"{exc.code}: {exc.details}"
            except Exception as exc:
                # A bug while handling a response must not end this task: that
                # would freeze the config silently forever. Log it loudly and
                # reconnect (with backoff), as for any broken stream.
                log.exception("xDS stream to %s failed", self._server_uri)
                self._last_error = repr(exc)
            if self._closed:
                # close() cancelled us, and the transport may have turned that
                # cancellation into a CANCELLED status caught above.
                return
            self._protocol.end_stream()
            self._arm_expiry()
            if self._connected:
                log.info("xDS stream to %s ended: %s", self._server_uri, self._last_error)
            else:
                log.debug("cannot reach xDS server %s: %s", self._server_uri, self._last_error)
            connected_here = self._connected
            self._set_connected(False)
            if self._got_response:
                self._backoff.reset()  # the server was healthy: start small again
            if connected_here:
                index = 0  # A71: after a lost stream, start again from the primary
            elif index + 1 < len(self._servers):
                index += 1  # this one is down: try the next at once
                continue
            else:
                index = 0
            if not connected_here:
                self._round_failed()
            delay = self._backoff.next_delay()
            if not self._ever_connected:
                # A workload waiting to start: keep the wait after the control
                # plane's return short (as the CA's, security/_identity.py).
                delay = min(delay, START_RECONNECT_CAP * random.uniform(0.5, 1.0))
            log.debug("reconnecting to %s in %.2fs", self._server_uri, delay)
            await self._sleep(delay)

    async def _run_stream(self, primary: Transport | None = None) -> None:
        """One ADS stream, until the server ends it (returns) or it fails (raises).
        With `primary` (we are on a fallback server) it also returns once the
        primary's channel is READY, so the next attempt goes back to it."""
        if self._channel is None:
            raise RuntimeError("XdsClient.start() was not called")
        protocol = self._protocol
        call = self._channel.open(protocol.METHOD, parser(protocol.RESPONSE))
        outbox: asyncio.Queue[Any] = asyncio.Queue()
        for request in self._protocol.start_stream():
            outbox.put_nowait(request)
        self._outbox = outbox
        self._arm_expiry()
        writer = asyncio.create_task(self._write_loop(call, outbox))
        back: asyncio.Future[None] | None = None
        try:
            await call.start()
            self._log_connected()
            self._ever_connected = True
            self._send(self._protocol.identify())
            self._set_connected(True)
            if primary is not None:
                back = asyncio.ensure_future(primary.wait_ready())
            while True:
                response = await _read_unless(call, back)
                if response is _PRIMARY_BACK:
                    self._last_error = "the primary xDS server is back: switching to it"
                    return
                if not self._protocol.is_response(response):  # None: ended with OK
                    self._last_error = "stream closed by the server"
                    return
                self._got_response = self._got_any_response = True
                self._handle(response)
        finally:
            self._outbox = None
            if back is not None:
                back.cancel()
            writer.cancel()
            call.cancel()
            await asyncio.wait([writer])

    async def _write_loop(self, call: AdsCall, outbox: asyncio.Queue[Any]) -> None:
        """Send queued requests in order. gRPC allows one write at a time, and
        watch()/unwatch() enqueue from other tasks, hence one writer per stream."""
        while True:
            request = await outbox.get()
            try:
                await call.write(request)
            except GrpcCallError as exc:
                # The stream is broken; the reader sees why and reconnects.
                log.debug("xDS write failed: %s", exc)
                return

    def _handle(self, response: Any) -> None:
        outcome = self._protocol.handle_response(response)
        rtype = ResourceType.from_type_url(response.type_url)
        kind = rtype.short_name if rtype else response.type_url
        for name, reason in outcome.rejected.items():
            log.warning(
                "NACK %s version %r from %s: %s: %s",
                kind,
                self._protocol.response_version(response),
                self._server_uri,
                name,
                reason,
            )
        self._send(outcome.requests)
        if self._cache is not None:
            self._cache.record(self._protocol.recordable(response), outcome.rejected)
        if outcome.changed:
            self._publish()
            if self._cache is not None:
                self._cache.save(self.state)

    def _round_failed(self) -> None:
        """Every server failed in a row: an outage starts (one WARNING)."""
        self._failed_rounds += 1
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "cannot reach the control plane (%s): %s; retrying with backoff, %s",
                ", ".join(self._servers),
                self._last_error,
                self._serving_what(),
            )
        self._notify()

    def _serving_what(self) -> str:
        state = self._protocol.state
        if not state.listeners:
            return "no config yet"
        written = self._cache.restored_written_at if self._cache is not None else None
        if self.restored_from_cache and not self._got_any_response and written is not None:
            return f"serving the cached config written {time.time() - written:.0f}s ago"
        return "serving the last good config"

    def _log_connected(self) -> None:
        """One INFO line per connection; the one that ends an outage says so."""
        if self._outage_since is not None:
            log.info(
                "control plane reachable again: xDS stream to %s connected after %.1fs",
                self._server_uri,
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None
        else:
            log.info("xDS stream to %s connected", self._server_uri)

    def _send(self, requests: list[Any]) -> None:
        # Without a live stream, start_stream() sends every subscription anyway.
        if self._outbox is not None:
            for request in requests:
                self._outbox.put_nowait(request)
            self._arm_expiry()

    def _arm_expiry(self) -> None:
        """(Re)schedule the one timer for the protocol's earliest does-not-exist
        deadline (the protocol keeps the deadlines; this only wakes it)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        at = self._protocol.next_expiry()
        if at is None or self._closed:
            return
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(max(0.0, at - time.monotonic()), self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry = None
        requests, changed = self._protocol.expire()
        self._send(requests)
        if changed:
            self._publish()
        self._arm_expiry()

    def _publish(self) -> None:
        state = self._protocol.state
        try:
            self._on_update(state)
        except Exception:
            # on_update belongs to the layer above; if it raised out of here it
            # would end the stream task and freeze the mesh's config for good.
            # The state is still published to waiters; the bug is logged loudly.
            log.exception("xDS on_update callback failed")
        self._notify()

    def _set_connected(self, connected: bool) -> None:
        if connected != self._connected:
            self._connected = connected
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _unresolved_message(self, names: list[str], timeout: float | None) -> str:
        state = self.state
        parts = [
            f"{n} (missing {', '.join(state.missing(n))})"
            for n in names
            if not state.is_resolved(n)
        ]
        errors = [f"{s.name}: {s.error}" for s in self.resource_status() if s.error]
        text = (
            f"xDS server {self._server_uri} did not resolve within {timeout:g}s: {'; '.join(parts)}"
        )
        if not self._connected:
            text += f"; not connected (last error: {self._last_error})"
        if errors:
            text += f"; rejected: {'; '.join(errors)}"
        return text
