"""Joining the mesh by starting: `Mesh(..., register=Registration(...))`.

`Registration` asks the control plane to add this process to a WorkloadGroup
(embedded registry): after the ADS stream is up, one unary call carries the
group, the address and ports the server listens on, and the join token that proves
the identity (the group's serviceAccount must be the token's). A refusal fails the
Mesh's start with the control plane's reason. On close it deregisters first (the
control plane drops it from EDS and pushes that to every client), waits
`drain_seconds` for clients to stop picking it and in-flight requests to finish,
and only then lets the Mesh close its stream.

Ports announced by the servers: a server bound on port 0 only knows its port
after binding, so `Registration(ports=...)` may leave ports to the server helpers
(`serve_asgi`, the WSGI worker, `add_mesh_port`), which call
`mesh.announce_port(name, port)` once they accept connections:
- `ports={"http": 8080}` (explicit numbers): registered on start, as given;
  announcements change nothing.
- `ports={"http": 0, "grpc": 0}` (0: announced): Register is deferred until every
  named port is announced, then sent once with all of them. Name every server
  this way: an endpoint is never advertised with a port that does not answer yet.
- `ports=None` (or {}): registered at the first announcement; a later server
  announcing a new name re-registers with the port added (the control plane
  keeps the member's health, so it does not flap). Until then that name falls
  back to the template's or the service's port number, hence the advice above.
Announcements of names the explicit `ports` do not list are ignored.

`ConsulRegistration` registers the service in a Consul agent instead (py-consul,
the `consul` extra) with a TTL check this process keeps passing, and deregisters on
close, so tools outside the mesh see it too; its `port` follows the same rule
(0 or None: registered at the announcement, `port_name` picks which). Both have
`start(mesh)`/`stop()`; a sequence of them may be given.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from proxyless_mesh import grpc_wire
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.errors import ControlPlaneUnavailableError, RegistrationError
from proxyless_mesh.runtime import check_port

if TYPE_CHECKING:
    from proxyless_mesh.mesh import Mesh

__all__ = [
    "ConsulRegistration",
    "PortAnnouncements",
    "Registrar",
    "Registration",
    "RegistrationError",
]

log = logging.getLogger("proxyless_mesh.registration")

_SERVICE = "/proxyless_mesh.registration.v1.Registration/"
GROUP_METADATA_KEY = "WORKLOAD_GROUP"
LABELS_METADATA_KEY = "LABELS"
ADDRESS_METADATA_KEY = "WORKLOAD_ADDRESS"
PORTS_METADATA_KEY = "WORKLOAD_PORTS"


class Registrar(Protocol):
    async def start(self, mesh: Mesh) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class PortAnnouncements(Protocol):
    """A registrar that learns ports from the server helpers: `Mesh.announce_port`
    calls this on the mesh's loop, after `start` (ports announced before the mesh
    started are in `mesh.announced_ports` when `start` runs)."""

    async def port_announced(self, mesh: Mesh, name: str, port: int) -> None: ...


def _dump(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _load(data: bytes) -> Any:
    return json.loads(data.decode())


@dataclass
class Registration:
    """Self-registration into a WorkloadGroup ("namespace/name").

    `ports` maps the group template's port names to numbers; 0 (or `ports=None`)
    leaves them to the server helpers' announcements (module docstring).
    `token` defaults to the bootstrap's join token (`meshctl bootstrap --token`);
    `labels` add to the group's; `drain_seconds` is how long close() waits between
    deregistering and closing (clients need one push to stop choosing us).
    """

    group: str
    ports: Mapping[str, int] | None = None
    address: str = "127.0.0.1"
    labels: Mapping[str, str] = field(default_factory=dict)
    locality: str = ""
    token: str | None = None
    drain_seconds: float = 1.0
    timeout: float = 5.0
    _channel: grpc_wire.UnaryChannel | None = field(default=None, init=False, repr=False)
    _node_id: str = field(default="", init=False, repr=False)
    _token: str = field(default="", init=False, repr=False)
    _announced: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _registered: dict[str, int] | None = field(default=None, init=False, repr=False)
    _arriving: set[int] = field(default_factory=set, init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        for name, port in (self.ports or {}).items():
            check_port(name, port, announced=False)

    @property
    def awaited(self) -> tuple[str, ...]:
        """The port names still to be announced before Register can be sent
        ("*": any one, for `ports=None`); empty once it can be."""
        declared = self.ports or {}
        if not declared:
            return () if self._announced else ("*",)
        return tuple(n for n, p in declared.items() if not p and n not in self._announced)

    def awaits_inbound_policy(self, port: int) -> bool:
        """Is `port` being registered, its inbound listener not followed yet?
        From the Register call until that listener arrived or is known not to
        exist (at most `timeout` after the call): the push that lists us in
        clients' EDS may reach them first, and until our policy is here the
        mesh answers 503 rather than serve unchecked (`Mesh.inbound_policies`)."""
        return port in self._arriving

    @property
    def registered_ports(self) -> dict[str, int] | None:
        """The ports the control plane accepted last (None: not registered)."""
        return None if self._registered is None else dict(self._registered)

    def current_ports(self) -> dict[str, int]:
        """What Register carries now: explicit numbers plus the announced ones."""
        fixed = {n: p for n, p in (self.ports or {}).items() if p}
        return {**self._announced, **fixed}

    def _accept(self, name: str, port: int) -> bool:
        """Record an announcement; False when it changes nothing (explicit
        number, a name the explicit ports do not list, or already known)."""
        declared = self.ports or {}
        if declared and declared.get(name, -1) != 0:
            log.debug("port %s=%d announced; Registration ports are explicit: ignored", name, port)
            return False
        if self._announced.get(name) == port:
            return False
        self._announced[name] = port
        return True

    @classmethod
    def from_bootstrap(cls, bootstrap: Bootstrap) -> Registration | None:
        """A Registration from node metadata WORKLOAD_GROUP, WORKLOAD_ADDRESS,
        WORKLOAD_PORTS ({name: port}, 0: announced by the server helper; absent:
        the first announced port) and LABELS (Istio's key, also the translator's
        view of this workload); None when the bootstrap names no group.
        `Mesh(register=None)` uses it (`meshctl bootstrap --workload-group`)."""
        meta = bootstrap.node_metadata
        group = meta.get(GROUP_METADATA_KEY)
        if not group:
            return None
        ports = meta.get(PORTS_METADATA_KEY) or {}
        labels = meta.get(LABELS_METADATA_KEY) or {}
        return cls(
            group=str(group),
            ports={str(k): int(v) for k, v in dict(ports).items()} or None,
            address=str(meta.get(ADDRESS_METADATA_KEY) or "127.0.0.1"),
            labels={str(k): str(v) for k, v in dict(labels).items()},
        )

    async def start(self, mesh: Mesh) -> None:
        bootstrap = mesh.bootstrap
        self._node_id = bootstrap.node_id
        self._token = self.token or str(bootstrap.proxyless_mesh.get("token") or "")
        self._channel = grpc_wire.unary_channel(mesh.xds.server_uri)
        for name, port in mesh.announced_ports.items():
            self._accept(name, port)
        await self._register_when_ready(mesh)

    async def port_announced(self, mesh: Mesh, name: str, port: int) -> None:
        """A server helper bound `port` for `name`: register if that was the
        last one awaited, or re-register with it added (ports=None)."""
        if self._accept(name, port) and self._channel is not None:
            await self._register_when_ready(mesh)

    async def _register_when_ready(self, mesh: Mesh) -> None:
        # One Register at a time, so two servers announcing at once cannot
        # send an older port set after a newer one.
        async with self._lock:
            awaited = self.awaited
            if awaited:
                log.info(
                    "registration of %s into %s waits for the server to announce port %s",
                    self._node_id,
                    self.group,
                    ", ".join(awaited),
                )
                return
            ports = self.current_ports()
            if ports == self._registered:
                return
            await self._register(mesh, ports)

    async def _register(self, mesh: Mesh, ports: dict[str, int]) -> None:
        body = {
            "node_id": self._node_id,
            "group": self.group,
            "address": self.address,
            "ports": ports,
            "labels": dict(self.labels),
            "locality": self.locality,
            "token": self._token,
        }
        added = [p for n, p in ports.items() if (self._registered or {}).get(n) != p]
        self._arriving.update(added)
        try:
            try:
                answer = await self._call("Register", body)
            except grpc_wire.GrpcCallError as exc:
                if self._registered is None:  # keep the channel to deregister with
                    await self._close_channel()
                raise RegistrationError(
                    f"registration of {self._node_id} into WorkloadGroup {self.group} "
                    f"refused by {mesh.xds.server_uri}: {exc.code}: {exc.details}"
                ) from None
            self._registered = ports
            log.info("registered into %s with %s (%s)", self.group, ports, answer.get("state"))
            await self._watch_inbound(mesh, added)
        finally:
            self._arriving.difference_update(added)

    async def _watch_inbound(self, mesh: Mesh, ports: Sequence[int]) -> None:
        """Subscribe to our inbound listeners, as a gRPC xDS server does. Besides
        being what a server should follow, it makes the ADS stream carry our node
        (the first request does), which is what ties our health to the stream."""
        template = mesh.bootstrap.server_listener_resource_name_template or (
            "grpc/server?xds.resource.listening_address=%s"
        )
        names = [template.replace("%s", f"{self.address}:{p}") for p in ports]
        try:
            await mesh.xds.watch_inbound(names, timeout=self.timeout)
        except ControlPlaneUnavailableError as exc:
            log.warning("inbound listeners not resolved: %s", exc)

    async def stop(self) -> None:
        """Deregister (drain), wait `drain_seconds`, then release the channel."""
        if self._channel is None:
            return
        registered, self._registered = self._registered, None
        self._announced.clear()
        if registered is None:  # never announced all its ports: nothing to drain
            await self._close_channel()
            return
        try:
            await self._call("Deregister", {"node_id": self._node_id, "token": self._token})
            await asyncio.sleep(self.drain_seconds)
        except grpc_wire.GrpcCallError as exc:
            # The control plane is gone: it will drop us when our stream ends.
            log.warning("could not deregister %s: %s", self._node_id, exc.details)
        finally:
            await self._close_channel()

    async def _call(self, method: str, body: Mapping[str, Any]) -> Any:
        if self._channel is None:
            raise RuntimeError("Registration.start() was not called")
        answer = await self._channel.call(_SERVICE + method, _dump(body), timeout=self.timeout)
        return _load(answer)

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()


@dataclass
class ConsulRegistration:
    """Register this service in a Consul agent with a TTL check kept passing.

    Needs py-consul (`pip install proxyless-mesh[consul]`). `consul_address` is
    "host:port" of the agent's HTTP API; `scheme="https"` plus `verify` (a CA file
    or bool) for TLS; `token` is the ACL token. Tags/meta become mesh labels in the
    control plane's Consul backend (`version=v2` tags work in subsets).

    `port` as `Registration`'s: a number registers on start as given
    (announcements change nothing); 0 or None waits for a server helper to
    announce it (`mesh.announce_port`), so a port-0 server is in Consul only once
    it answers, with the port it really bound. `port_name` picks the announcement
    ("http", "grpc"); None takes the first one announced (a Consul service has one
    port: name it when several servers announce). A later announcement of that
    name with another port re-registers. The TTL check starts with the first
    registration.
    """

    name: str
    port: int | None = None
    address: str = "127.0.0.1"
    service_id: str = ""
    tags: Sequence[str] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    consul_address: str = "127.0.0.1:8500"
    scheme: str = "http"
    token: str | None = None
    datacenter: str | None = None
    verify: bool | str = True
    ttl: float = 10.0
    port_name: str | None = None
    _client: Any = field(default=None, init=False, repr=False)
    _heartbeat: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _announced: tuple[str, int] | None = field(default=None, init=False, repr=False)
    _registered: int | None = field(default=None, init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.port is not None:
            check_port("port", self.port, announced=False)
        if self.port_name is not None:
            check_port(self.port_name, 1)  # only the name is checked here

    @property
    def check_id(self) -> str:
        return f"service:{self.service_id or self.name}"

    @property
    def awaited(self) -> str | None:
        """The port name still to be announced ("*": any), None once the
        port is known."""
        if self.port or self._announced is not None:
            return None
        return self.port_name or "*"

    @property
    def registered_port(self) -> int | None:
        """The port Consul has for this service now (None: not registered)."""
        return self._registered

    async def start(self, mesh: Mesh | None = None) -> None:
        """Connect; register now when the port is known (explicit, or announced
        before the mesh started), else at the announcement (`port_announced`)."""
        try:
            import consul  # type: ignore[import-untyped]
        except ImportError:
            raise RegistrationError(
                "ConsulRegistration needs py-consul: pip install 'proxyless-mesh[consul]'"
            ) from None
        host, _, port = self.consul_address.rpartition(":")
        self._client = consul.Consul(
            host=host or "127.0.0.1",
            port=int(port),
            token=self.token,
            scheme=self.scheme,
            dc=self.datacenter,
            verify=self.verify,
        )
        for name, announced in (mesh.announced_ports if mesh is not None else {}).items():
            self._accept(name, announced)
        await self._register_when_ready()

    async def port_announced(self, mesh: Mesh | None, name: str, port: int) -> None:
        """A server helper bound `port` for `name`: register (or re-register
        with the new port) when it is the port this service waits for."""
        if self._accept(name, port) and self._client is not None:
            await self._register_when_ready()

    def _accept(self, name: str, port: int) -> bool:
        """Record an announcement; False when it changes nothing (explicit
        port, another name, or the port already known)."""
        if self.port:
            return False
        wanted = self.port_name or (self._announced[0] if self._announced else name)
        if name != wanted or self._announced == (name, port):
            return False
        self._announced = (name, port)
        return True

    async def _register_when_ready(self) -> None:
        # One registration at a time: two announcements racing cannot leave
        # Consul with the older port.
        async with self._lock:
            port = self.port or (self._announced[1] if self._announced else 0)
            if not port:
                log.info(
                    "Consul registration of %s waits for the server to announce port %s",
                    self.name,
                    self.awaited,
                )
                return
            if port != self._registered:
                await self._register(port)

    async def _register(self, port: int) -> None:
        import consul  # type: ignore[import-untyped]

        try:
            await asyncio.to_thread(
                self._client.agent.service.register,
                self.name,
                service_id=self.service_id or self.name,
                address=self.address,
                port=port,
                tags=list(self.tags),
                meta=dict(self.meta),
                check=consul.Check.ttl(f"{self.ttl:g}s"),
            )
            # Consul starts a (re-)registered TTL check critical: pass it now.
            await asyncio.to_thread(self._client.agent.check.ttl_pass, self.check_id)
        except (consul.ConsulException, OSError) as exc:
            raise RegistrationError(
                f"Consul at {self.consul_address} refused to register {self.name}: {exc}"
            ) from None
        self._registered = port
        log.info("registered %s in Consul with port %d", self.name, port)
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._keep_passing(), name="consul-ttl")

    async def _keep_passing(self) -> None:
        import consul  # type: ignore[import-untyped]

        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await asyncio.to_thread(self._client.agent.check.ttl_pass, self.check_id)
            except (consul.ConsulException, OSError) as exc:
                # Stated reason: Consul being away for a moment must not end the
                # heartbeat; the next beat re-passes the check.
                log.warning("Consul TTL pass for %s failed: %s", self.check_id, exc)

    async def stop(self) -> None:
        """Stop the heartbeat, then deregister (if it ever registered)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.wait([self._heartbeat])
            self._heartbeat = None
        client, self._client = self._client, None
        registered, self._registered = self._registered, None
        self._announced = None
        if client is None or registered is None:
            return
        import consul  # type: ignore[import-untyped]

        try:
            await asyncio.to_thread(client.agent.service.deregister, self.service_id or self.name)
        except (consul.ConsulException, OSError) as exc:
            log.warning("Consul deregistration of %s failed: %s", self.name, exc)
