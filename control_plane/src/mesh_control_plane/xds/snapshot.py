"""The versioned snapshot cache: current config in, per-client xDS resources out.

Translation is a pure function of (config, registry, node), so the cache
memoizes it per `NodeInfo.cache_key` for the current version: a thousand
clients of the same kind cost one translation. Each resource is serialized
and packed into an `Any` once per (type, name, content) and that very object
is shared by every response that carries it; its sha256 is what the server
compares to decide whether a client needs a push at all.

A config becomes current only if the resources it produces are consistent
(every CDS->EDS and LDS->RDS reference resolves) for every client kind in use,
as go-control-plane's `Snapshot.Consistent()` does; otherwise it is refused
and the last good one stays.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import any_pb2
from google.protobuf.message import Message

from mesh_control_plane.config.model import MeshConfig, WorkloadEndpoint
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import (
    ClientKind,
    NodeInfo,
    ResourceSet,
    check_consistency,
    translate,
)

log = logging.getLogger(__name__)

Registry = Mapping[str, tuple[WorkloadEndpoint, ...]]
Translator = Callable[[MeshConfig, Registry, NodeInfo], ResourceSet]
RegistryBuilder = Callable[[MeshConfig], Registry]
ConsistencyChecker = Callable[[ResourceSet], list[str]]
ChangeListener = Callable[[str], None]

_TYPE_PREFIX = "type.googleapis.com/"

REFERENCE_NODES = tuple(NodeInfo(id=f"reference-{k.value}", kind=k) for k in ClientKind)
"""One node of each client kind: every config is checked against all of them,
whether or not such a client is connected yet, so a config that would break a
kind is refused before the first client of that kind arrives."""


@dataclass(frozen=True, slots=True)
class PackedResource:
    """One resource ready for the wire, shared by all clients that receive it."""

    type_url: str
    name: str
    hash: str  # sha256 hex of the deterministic serialization
    any: any_pb2.Any
    message: Message


class InconsistentConfigError(Exception):
    """The config translates to resources that refer to missing ones."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "config refused, it leaves dangling references: " + "; ".join(self.problems)
        )


@dataclass(slots=True)
class _Translation:
    resource_set: ResourceSet
    packed: dict[str, dict[str, PackedResource]]


def _pack(
    type_url: str,
    name: str,
    msg: Message,
    interned: dict[tuple[str, str, str], PackedResource],
    previous: Mapping[tuple[str, str, str], PackedResource],
    last: tuple[Message, PackedResource] | None = None,
) -> PackedResource:
    if last is not None and last[0] is msg:  # reused as it is by an incremental translator
        interned[(type_url, name, last[1].hash)] = last[1]
        return last[1]
    data = msg.SerializeToString(deterministic=True)
    digest = hashlib.sha256(data).hexdigest()
    key = (type_url, name, digest)
    found = interned.get(key) or previous.get(key)
    if found is None:
        any_msg = any_pb2.Any(type_url=_TYPE_PREFIX + msg.DESCRIPTOR.full_name, value=data)
        found = PackedResource(type_url, name, digest, any_msg, msg)
    interned[key] = found
    return found


class SnapshotCache:
    """Holds the current (config, registry, version) and the resources per client kind.

    Not thread-safe: it lives on the control plane's event loop, where the
    config watcher sets configs and the ADS streams read resources.
    """

    def __init__(
        self,
        *,
        reference_nodes: Iterable[NodeInfo] = REFERENCE_NODES,
        translator: Translator = translate,
        registry_builder: RegistryBuilder = build_static_registry,
        consistency_checker: ConsistencyChecker = check_consistency,
    ) -> None:
        """`reference_nodes` are always checked for consistency and back
        `config_dump`, whether or not such a client is connected."""
        self._translate = translator
        self._build_registry = registry_builder
        self._check = consistency_checker
        self._reference: dict[Hashable, NodeInfo] = {n.cache_key: n for n in reference_nodes}
        self._retained: dict[Hashable, tuple[NodeInfo, int]] = {}
        self._listeners: list[ChangeListener] = []
        self._counter = 0
        self._config = MeshConfig()
        self._registry = self._build_registry(self._config)
        self._memo: dict[Hashable, _Translation] = {}
        self._interned: dict[tuple[str, str, str], PackedResource] = {}

    @property
    def version(self) -> str:
        """The version string sent as `version_info`; bumped by each accepted change."""
        return str(self._counter)

    @property
    def config(self) -> MeshConfig:
        return self._config

    @property
    def registry(self) -> Registry:
        return self._registry

    def add_listener(self, listener: ChangeListener) -> Callable[[], None]:
        """Call `listener(version)` after each accepted change; returns a remover."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def retain(self, node: NodeInfo) -> None:
        """A client of this kind is connected: check new configs against it too."""
        key = node.cache_key
        held = self._retained.get(key)
        self._retained[key] = (node, 1 if held is None else held[1] + 1)

    def release(self, node: NodeInfo) -> None:
        key = node.cache_key
        held = self._retained.get(key)
        if held is None:
            return
        if held[1] <= 1:
            del self._retained[key]
        else:
            self._retained[key] = (held[0], held[1] - 1)

    def set_config(
        self, config: MeshConfig, *, force: bool = False, version: int | None = None
    ) -> bool:
        """Make `config` current. Returns False when it equals the current one
        (nothing to push) unless `force` (a registry source changed: the same
        config gives other endpoints, see registry/hub.py). `version`: the
        number to serve it as (an ADS worker follows its leader's), else the
        next. Raises InconsistentConfigError (and keeps the last good config) when it
        translates to dangling references."""
        if config == self._config and not force:
            return False
        registry = self._build_registry(config)
        if force and config == self._config and registry == self._registry:
            return False
        nodes: dict[Hashable, NodeInfo] = dict(self._reference)
        nodes.update((k, held[0]) for k, held in self._retained.items())
        interned: dict[tuple[str, str, str], PackedResource] = {}
        memo: dict[Hashable, _Translation] = {}
        kinds_by_problem: dict[str, list[str]] = {}
        for key, node in nodes.items():
            translation = self._translation(config, registry, node, interned)
            memo[key] = translation
            for problem in self._check(translation.resource_set):
                kinds = kinds_by_problem.setdefault(problem, [])
                if node.kind.name not in kinds:
                    kinds.append(node.kind.name)
        problems = [f"{p} (for {', '.join(k)} clients)" for p, k in kinds_by_problem.items()]
        if problems:
            for problem in problems:
                log.error("config refused: %s", problem)
            raise InconsistentConfigError(problems)
        self._config, self._registry = config, registry
        self._memo, self._interned = memo, interned
        self._counter = self._counter + 1 if version is None else version
        log.info("config version %s is current (%d client kinds)", self.version, len(memo))
        for listener in list(self._listeners):
            listener(self.version)
        return True

    def resources(self, node: NodeInfo, type_url: str) -> Mapping[str, PackedResource]:
        """All resources of `type_url` this client would see, by name."""
        return self._current(node).packed.get(type_url, {})

    def resource_set(self, node: NodeInfo) -> ResourceSet:
        """The raw translation for this client (for config_dump)."""
        return self._current(node).resource_set

    def reference_nodes(self) -> list[NodeInfo]:
        return list(self._reference.values())

    def _current(self, node: NodeInfo) -> _Translation:
        key = node.cache_key
        found = self._memo.get(key)
        if found is None:
            found = self._translation(self._config, self._registry, node, self._interned)
            self._memo[key] = found
        return found

    def _translation(
        self,
        config: MeshConfig,
        registry: Registry,
        node: NodeInfo,
        interned: dict[tuple[str, str, str], PackedResource],
    ) -> _Translation:
        resource_set = self._translate(config, registry, node)
        before = self._memo.get(node.cache_key)
        packed: dict[str, dict[str, PackedResource]] = {}
        for type_url, by_name in resource_set.resources.items():
            packed[type_url] = {
                name: _pack(
                    type_url, name, msg, interned, self._interned, _last(before, type_url, name)
                )
                for name, msg in by_name.items()
            }
        return _Translation(resource_set, packed)


def _last(
    before: _Translation | None, type_url: str, name: str
) -> tuple[Message, PackedResource] | None:
    """The message this node was last given under that name, and its packing."""
    if before is None:
        return None
    msg = before.resource_set.resources.get(type_url, {}).get(name)
    return None if msg is None else (msg, before.packed[type_url][name])
