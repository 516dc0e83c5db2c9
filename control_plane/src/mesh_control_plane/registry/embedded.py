"""Self-registration: workloads join the mesh by starting (the embedded registry).

A workload names its WorkloadGroup, its address and ports, and proves who it is
with its join token; the group's serviceAccount must be the identity the token
grants (namespace and service account), so nobody registers as someone else.

Health follows the workload's ADS stream (keyed by node id): an instance is served
(HEALTHY) while at least one stream with its node id is open and its group's probe,
if any, passes. When the last stream drops it is UNHEALTHY at once (still in EDS with
that status, so balancers stop picking it) and forgotten after `grace` seconds unless
it reconnects. A clean shutdown deregisters first (DRAINING in EDS, pushed to every
client) and closes afterwards, so no new request is sent to it while it still answers
the ones in flight. Keeping the status, rather than dropping the instance, tells
clients why it left; a member that never opened a stream (CONNECTING) is not listed.

A workload registers again when one of its servers announces a port later (port 0):
the same node id into the same group is an update of the member (ports, labels,
address), keeping its health, stream, probe and grace timer, so the endpoint does
not flap to CONNECTING (hidden) or UNHEALTHY while it keeps answering. A different
group, or a member that is draining, starts afresh.

The state lives in this process: with the embedded registry a single control plane
replica is the limit (several replicas need a shared registry such as Consul).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mesh_control_plane.config.model import MeshConfig, ServiceEntry, WorkloadEndpoint
from mesh_control_plane.registry.hub import DynamicInstance
from mesh_control_plane.registry.probes import run_probe
from mesh_control_plane.registry.workload_group import WorkloadGroup

log = logging.getLogger(__name__)

__all__ = [
    "EmbeddedRegistry",
    "MemberState",
    "RegistrationRefused",
    "RegistrationRequest",
]

TokenVerifier = Callable[[str], tuple[str, str]]
"""token -> (namespace, service account) it grants; raises ValueError(reason)."""

DEFAULT_GRACE = 10.0


class MemberState(enum.Enum):
    CONNECTING = "CONNECTING"  # registered, no ADS stream yet
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"  # stream down or probe failing
    DRAINING = "DRAINING"  # deregistered cleanly, closing


class RegistrationRefused(Exception):
    """Why a registration is refused; `code` is "NOT_FOUND", "PERMISSION_DENIED" or
    "INVALID_ARGUMENT" (the gRPC status the registration service answers with)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class RegistrationRequest:
    node_id: str
    group: str  # "namespace/name"
    address: str
    ports: Mapping[str, int] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    locality: str = ""
    token: str = ""


@dataclass
class _Member:
    request: RegistrationRequest
    group: WorkloadGroup
    state: MemberState = MemberState.CONNECTING
    probe_ok: bool = True
    registered_at: float = field(default_factory=time.time)
    expiry: asyncio.TimerHandle | None = None
    prober: asyncio.Task[None] | None = None

    def endpoint(self) -> WorkloadEndpoint:
        group, req = self.group, self.request
        return WorkloadEndpoint(
            address=req.address,
            ports=dict({**group.ports, **req.ports}),
            labels=group.member_labels(req.labels),
            locality=req.locality or group.locality,
            weight=group.weight,
            network=group.network,
            service_account=group.service_account or "default",
            health=self.state.value,
            workload_name=group.name,  # Istio names auto-registered workloads by their group
            namespace=group.namespace,
        )


class EmbeddedRegistry:
    """Registered workloads and their health, on the control plane's event loop."""

    def __init__(
        self,
        groups: Callable[[], Iterable[WorkloadGroup]],
        verify_token: TokenVerifier | None,
        *,
        grace: float = DEFAULT_GRACE,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        """`groups` returns the current WorkloadGroups (they may be reloaded);
        without `verify_token` every registration is refused: identity is not optional."""
        self._groups = groups
        self._verify = verify_token
        self.grace = grace
        self.on_change = on_change
        self._members: dict[str, _Member] = {}
        self._streams: dict[str, int] = {}
        self.refusals: list[str] = []  # the last few refusals, for status

    # -- registration ---------------------------------------------------------

    def register(self, request: RegistrationRequest) -> MemberState:
        """Admit `request` or raise RegistrationRefused with a reason a human can act on."""
        try:
            group = self._admit(request)
        except RegistrationRefused as exc:
            self.refusals = [*self.refusals[-19:], f"{request.node_id}: {exc.reason}"]
            log.warning("registration of %s refused: %s", request.node_id, exc.reason)
            raise
        member = self._update(request, group)
        if member is None:
            old = self._members.pop(request.node_id, None)
            if old is not None:
                _cancel(old)
            member = _Member(request, group)
            self._members[request.node_id] = member
        log.info(
            "%s registered into WorkloadGroup %s at %s %s",
            request.node_id,
            group.ref,
            request.address,
            dict(request.ports),
        )
        self._refresh(member)
        self.on_change()
        return member.state

    def _update(self, request: RegistrationRequest, group: WorkloadGroup) -> _Member | None:
        """The member `request` re-registers, updated in place (its state and
        timers kept); None when it is a new one (see the module docstring)."""
        member = self._members.get(request.node_id)
        if member is None or member.state is MemberState.DRAINING or member.group.ref != group.ref:
            return None
        if member.group.probe != group.probe and member.prober is not None:
            member.prober.cancel()  # the probe changed: the next refresh starts the new one
            member.prober = None
        member.request, member.group = request, group
        return member

    def _admit(self, request: RegistrationRequest) -> WorkloadGroup:
        if not request.node_id or not request.address:
            raise RegistrationRefused("INVALID_ARGUMENT", "node id and address are required")
        namespace, _, name = request.group.partition("/")
        group = next(
            (g for g in self._groups() if g.namespace == namespace and g.name == name), None
        )
        if group is None:
            raise RegistrationRefused(
                "NOT_FOUND",
                f"no WorkloadGroup {request.group!r} (write one: namespace/name must match)",
            )
        if self._verify is None:
            raise RegistrationRefused(
                "PERMISSION_DENIED",
                "this control plane has no CA to verify join tokens; start it with a CA",
            )
        if not request.token:
            raise RegistrationRefused("PERMISSION_DENIED", "no join token: identity is required")
        try:
            granted_ns, granted_sa = self._verify(request.token)
        except ValueError as exc:
            raise RegistrationRefused("PERMISSION_DENIED", str(exc)) from None
        wanted_sa = group.service_account or "default"
        if (granted_ns, granted_sa) != (group.namespace, wanted_sa):
            raise RegistrationRefused(
                "PERMISSION_DENIED",
                f"WorkloadGroup {group.ref} runs as serviceAccount {group.namespace}/{wanted_sa}"
                f" but the token grants {granted_ns}/{granted_sa}: nobody registers as "
                "someone else",
            )
        return group

    def check_owner(self, node_id: str, token: str) -> None:
        """Raise RegistrationRefused unless `token` grants the identity `node_id`
        registered with: one workload cannot drain another."""
        member = self._members.get(node_id)
        if member is None or self._verify is None:
            return
        try:
            granted = self._verify(token)
        except ValueError as exc:
            raise RegistrationRefused("PERMISSION_DENIED", str(exc)) from None
        expected = (member.group.namespace, member.group.service_account or "default")
        if granted != expected:
            raise RegistrationRefused(
                "PERMISSION_DENIED", f"{node_id} is registered as {'/'.join(expected)}"
            )

    def deregister(self, node_id: str) -> bool:
        """A clean shutdown: DRAINING in EDS at once, forgotten after `grace`."""
        member = self._members.get(node_id)
        if member is None:
            return False
        _cancel(member)
        member.state = MemberState.DRAINING
        log.info("%s deregistered: draining", node_id)
        self._expire_later(node_id, member)
        self.on_change()
        return True

    # -- stream liveness ------------------------------------------------------

    def stream_opened(self, node_id: str) -> None:
        self._streams[node_id] = self._streams.get(node_id, 0) + 1
        member = self._members.get(node_id)
        if member is not None and member.state is not MemberState.DRAINING:
            if member.expiry is not None:
                member.expiry.cancel()
                member.expiry = None
            if self._refresh(member):
                self.on_change()

    def stream_closed(self, node_id: str) -> None:
        count = self._streams.get(node_id, 0) - 1
        if count > 0:
            self._streams[node_id] = count
            return
        self._streams.pop(node_id, None)
        member = self._members.get(node_id)
        if member is None or member.state is MemberState.DRAINING:
            return
        if member.prober is not None:
            member.prober.cancel()
            member.prober = None
        member.state = MemberState.UNHEALTHY
        log.warning("%s lost its xDS stream: unhealthy, removed in %gs", node_id, self.grace)
        self._expire_later(node_id, member)
        self.on_change()

    def _expire_later(self, node_id: str, member: _Member) -> None:
        loop = asyncio.get_running_loop()
        member.expiry = loop.call_later(self.grace, self._expire, node_id, member)

    def _expire(self, node_id: str, member: _Member) -> None:
        if self._members.get(node_id) is member:
            del self._members[node_id]
            log.info("%s removed from the registry", node_id)
            self.on_change()

    def _refresh(self, member: _Member) -> bool:
        """Recompute the state from stream and probe; True when it changed."""
        before = member.state
        if self._streams.get(member.request.node_id, 0) <= 0:
            member.state = (
                MemberState.CONNECTING
                if before is MemberState.CONNECTING
                else MemberState.UNHEALTHY
            )
        else:
            member.state = MemberState.HEALTHY if member.probe_ok else MemberState.UNHEALTHY
            if member.group.probe is not None and member.prober is None:
                member.probe_ok = False  # not served until the first probe passes
                member.state = MemberState.UNHEALTHY
                member.prober = asyncio.get_running_loop().create_task(self._probe_loop(member))
        return member.state is not before

    async def _probe_loop(self, member: _Member) -> None:
        probe = member.group.probe
        if probe is None:
            return
        await asyncio.sleep(probe.initial_delay)
        successes = failures = 0
        while True:
            ok = await run_probe(probe, member.request.address)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            flip_up = not member.probe_ok and successes >= probe.success_threshold
            flip_down = member.probe_ok and failures >= probe.failure_threshold
            if flip_up or flip_down:
                member.probe_ok = flip_up
                log.info("%s probe %s", member.request.node_id, "passes" if ok else "fails")
                if self._refresh(member):
                    self.on_change()
            await asyncio.sleep(probe.period)

    # -- the RegistrySource side ----------------------------------------------

    def instances(self) -> Sequence[DynamicInstance]:
        """Every member that has been served, with its health: HEALTHY, UNHEALTHY
        (until the grace period forgets it) or DRAINING. CONNECTING members are left
        out: no client ever knew them, so there is nothing to tell."""
        return [
            DynamicInstance(m.group.namespace, m.endpoint())
            for m in self._members.values()
            if m.state is not MemberState.CONNECTING
        ]

    def service_entries(self, config: MeshConfig) -> Sequence[ServiceEntry]:
        return ()

    def state_of(self, node_id: str) -> MemberState | None:
        member = self._members.get(node_id)
        return None if member is None else member.state

    def status(self) -> Mapping[str, Any]:
        return {
            "members": {
                node: {
                    "group": m.group.ref,
                    "address": m.request.address,
                    "state": m.state.value,
                }
                for node, m in sorted(self._members.items())
            },
            "refusals": list(self.refusals),
        }

    def close(self) -> None:
        for member in self._members.values():
            _cancel(member)


def _cancel(member: _Member) -> None:
    if member.expiry is not None:
        member.expiry.cancel()
        member.expiry = None
    if member.prober is not None:
        member.prober.cancel()
        member.prober = None
