"""An on-disk copy of the last good xDS config, so a process that restarts
while the control plane is down starts routing from what it had, instead of
failing. Neither Envoy nor gRPC does this; a Python service restarts far more
often than either (deploys, worker recycling), so it matters more here.

What is stored: for each of LDS/RDS/CDS/EDS, the serialized protobuf of every
resource the client accepted and still uses, never our decoded objects (a
cache written by one library version is re-decoded, and so re-validated, by
the next). Resources carrying key material (inline TLS private keys or
certificates) are never written here (the workload's own key and certificate
have their own cache, with its own opt-out: security/_cert_cache.py).

The file: one JSON header line (format, schema version, node id, xDS server,
SHA-256 of the body), then the body (JSON). Written to a temporary file in
the same directory, fsynced and renamed over the old one, so a crash leaves
the old cache or the new one, never half of either; a body whose hash does not
match, a newer schema, another node or another server is ignored with one
warning. Mode 0600: the config names every service and endpoint.

Path: the bootstrap's `proxyless_mesh.config_cache_path`; absent means the
default (`$XDG_CACHE_HOME` or `~/.cache`, `proxyless-mesh/xds-<hash>.cache`,
hash of node id and server), `false` or `""` turns the cache off.

Several processes with one node id (gunicorn workers, replicas on one host)
share that file on purpose: a restart must find it, whatever its pid. The
rule is last writer wins, whole file: each writer writes its own uniquely
named temporary file and renames it over the cache, so a reader sees one
writer's complete file, never a mix, and a torn or half-written file fails
the checksum and is ignored. The writers hold the same config (same node, same
server), so whichever wins is a good start.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.errors import XdsResourceError
from proxyless_mesh.xds_client import _wire
from proxyless_mesh.xds_client._codec import any_message
from proxyless_mesh.xds_client._decode import decode_resource, resource_name, unpack_resource
from proxyless_mesh.xds_client._state import XdsState
from proxyless_mesh.xds_client._types import ResourceType

__all__ = [
    "CACHE_PATH_FIELD",
    "FORMAT",
    "SCHEMA_VERSION",
    "CachedConfig",
    "ConfigCache",
    "config_cache_path",
    "contains_key_material",
    "default_cache_path",
]

log = logging.getLogger("proxyless_mesh.xds_client")

CACHE_PATH_FIELD = "config_cache_path"
FORMAT = "proxyless-mesh-xds-cache"
SCHEMA_VERSION = 1
_MAY_HOLD_SECRETS = (".Listener", ".Cluster")  # transport sockets live only there
_SECRET_FIELDS = frozenset({"private_key", "tls_certificates", "session_ticket_keys", "password"})
_ORPHAN_AGE = 600.0  # seconds: a temporary file this old belongs to a writer that died


@dataclass(frozen=True)
class _Packed:
    type_url: str
    value: bytes


@dataclass(frozen=True)
class CachedConfig:
    """What a cache file held: serialized resources by type and name, and when
    it was written (seconds since the epoch), for the log line on restore."""

    resources: Mapping[ResourceType, Mapping[str, bytes]]
    written_at: float

    def decoded(self) -> dict[ResourceType, dict[str, Any]]:
        """Decode every resource again; one that no longer decodes (the
        library got stricter) is dropped with a warning, the rest are kept."""
        out: dict[ResourceType, dict[str, Any]] = {t: {} for t in ResourceType}
        for rtype, by_name in self.resources.items():
            for name, raw in by_name.items():
                try:
                    msg = unpack_resource(rtype, any_message(rtype.type_url, raw))
                    out[rtype][name] = decode_resource(rtype, msg)
                except XdsResourceError as exc:
                    log.warning("cached %s %r no longer decodes: %s", rtype.short_name, name, exc)
        return out


def default_cache_path(bootstrap: Bootstrap, environ: Mapping[str, str] | None = None) -> Path:
    """Where the cache goes when the bootstrap does not say: per user, one file
    per (node id, xDS server), so two processes with different identities on
    one host never read each other's config."""
    env = os.environ if environ is None else environ
    base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    server = bootstrap.xds_servers[0].server_uri if bootstrap.xds_servers else ""
    digest = hashlib.sha256(f"{bootstrap.node_id}\0{server}".encode()).hexdigest()[:16]
    return base / "proxyless-mesh" / f"xds-{digest}.cache"


def config_cache_path(
    bootstrap: Bootstrap, environ: Mapping[str, str] | None = None
) -> Path | None:
    """Where the bootstrap asks the config to be cached; None when turned off.
    (The workload certificate cache, if on, is kept beside it.)"""
    setting = bootstrap.proxyless_mesh.get(CACHE_PATH_FIELD)
    if setting is False or setting == "":
        return None
    if setting is None or setting is True:
        return default_cache_path(bootstrap, environ)
    if isinstance(setting, str):
        return Path(os.path.expanduser(setting))
    log.warning("bootstrap proxyless_mesh.%s must be a path or false", CACHE_PATH_FIELD)
    return None


def contains_key_material(resource: Any) -> bool:
    """True when a resource (an Any: `type_url`, `value`) carries secrets (a
    PEM private key anywhere, or a set field named like a key/certificate
    holder, also inside nested Any). Read with `_wire`."""
    if b"PRIVATE KEY" in resource.value:
        return True
    if not resource.type_url.endswith(_MAY_HOLD_SECRETS):
        return False  # routes and endpoints have no TLS fields: skip the walk
    try:
        msg = _wire.parse(resource.type_url.rsplit("/", 1)[-1], resource.value)
    except KeyError:
        return False  # unknown type: the byte scan above is all we can do
    except _wire.WireError:
        return False  # it will not decode for use either, so it is never cached
    return _walk_for_secrets(msg, depth=0)


def _walk_for_secrets(msg: _wire.WireMessage, depth: int) -> bool:
    if depth > 32:
        return True  # absurdly deep: refuse to cache rather than guess
    if msg.message_type_name() == "google.protobuf.Any":
        try:
            inner = _wire.parse(msg.type_url.rsplit("/", 1)[-1], msg.value)
        except (KeyError, _wire.WireError):
            return False
        return _walk_for_secrets(inner, depth + 1)
    for field, value in msg.ListFields():
        if field.name in _SECRET_FIELDS:
            return True
        items = value.values() if isinstance(value, dict) else value
        for item in items if isinstance(value, dict | list) else [value]:
            if isinstance(item, _wire.WireMessage) and _walk_for_secrets(item, depth + 1):
                return True
    return False


class ConfigCache:
    """Records what the client accepted and writes it to one file.

    Use: `restore(protocol)` once before the first stream, `record(response,
    rejected)` for every response handled, `save(state)` after every applied
    update, `flush()` at close. Writes are throttled to one per
    `min_interval` seconds (a trailing write is scheduled on the running loop,
    or done at `flush()`), so a flood of updates costs at most one write per
    interval."""

    def __init__(
        self,
        path: Path,
        *,
        node_id: str,
        server_uri: str,
        min_interval: float = 1.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._identity = {"node_id": node_id, "server_uri": server_uri}
        self._raw: dict[ResourceType, dict[str, bytes]] = {t: {} for t in ResourceType}
        self._min_interval = min_interval
        self._clock = clock
        self._last_write = float("-inf")
        self._pending: XdsState | None = None
        self._timer: Any = None
        self.writes = 0  # files written, for tests and metrics
        self.restored_written_at: float | None = None  # the restored file's write time

    @classmethod
    def from_bootstrap(
        cls, bootstrap: Bootstrap, environ: Mapping[str, str] | None = None
    ) -> ConfigCache | None:
        """The cache the bootstrap asks for; None when turned off."""
        path = config_cache_path(bootstrap, environ)
        if path is None:
            return None
        server = bootstrap.xds_servers[0].server_uri if bootstrap.xds_servers else ""
        return cls(path, node_id=bootstrap.node_id, server_uri=server)

    # -- reading -------------------------------------------------------------

    def load(self) -> CachedConfig | None:
        """The cached config, or None (no file, unreadable, corrupt, another
        schema/node/server). Never raises: a bad cache must not stop a start."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read xDS config cache %s: %s", self.path, exc)
            return None
        try:
            return self._parse(data)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring xDS config cache %s: %s", self.path, exc)
            return None

    def _parse(self, data: bytes) -> CachedConfig:
        head, sep, body = data.partition(b"\n")
        if not sep:
            raise ValueError("no header line")
        header = json.loads(head)
        if header.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        if header.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"schema {header.get('schema')!r}, this library reads 1")
        for key, want in self._identity.items():
            if header.get(key) != want:
                raise ValueError(f"written for {key} {header.get(key)!r}, not {want!r}")
        if hashlib.sha256(body).hexdigest() != header.get("sha256"):
            raise ValueError("checksum mismatch (truncated or modified)")
        doc = json.loads(body)
        resources: dict[ResourceType, dict[str, bytes]] = {}
        for type_url, by_name in doc["resources"].items():
            rtype = ResourceType.from_type_url(type_url)
            if rtype is None:
                raise ValueError(f"unknown type URL {type_url!r}")
            resources[rtype] = {str(n): base64.b64decode(v) for n, v in by_name.items()}
        return CachedConfig(resources, float(header.get("written_at", 0.0)))

    def restore(self, protocol: Any) -> bool:
        """Seed an `AdsProtocol` that has not started a stream with the cached
        resources, and watch the cached listeners. Returns whether anything was
        restored (then the caller publishes `protocol.state`).

        Versions are not restored on purpose: the first requests carry an empty
        version, so the server sends everything fresh and nothing stale can be
        mistaken for current."""
        cached = self.load()
        if cached is None:
            return False
        decoded = cached.decoded()
        if not decoded[ResourceType.LISTENER]:
            return False
        types = protocol._types  # the wiring recipe keeps this one private access here
        for rtype, values in decoded.items():
            ts = types[rtype]
            ts.resources.update(values)
            ts.versions.update(dict.fromkeys(values, ""))
            self._raw[rtype].update(cached.resources.get(rtype, {}))
        protocol.watch(decoded[ResourceType.LISTENER])
        for ts in types.values():  # drop what no cached listener reaches
            ts.forget([n for n in ts.resources if n not in ts.names])
        protocol._state = None
        self.restored_written_at = cached.written_at
        age = time.time() - cached.written_at
        # INFO: every normal restart does this; only an unreachable control
        # plane makes it matter, and the client warns about that itself.
        log.info(
            "xDS config restored from cache %s (written %.0fs ago): %d listeners, %d clusters;"
            " it will be replaced as soon as the control plane answers",
            self.path,
            age,
            len(decoded[ResourceType.LISTENER]),
            len(decoded[ResourceType.CLUSTER]),
        )
        return True

    # -- writing -------------------------------------------------------------

    def record(self, response: Any, rejected: Iterable[str]) -> None:
        """Remember the bytes of each resource in `response` that was not
        rejected (the protocol decided that; we only mirror it)."""
        rtype = ResourceType.from_type_url(response.type_url)
        if rtype is None:
            return
        bad = set(rejected)
        store = self._raw[rtype]
        for res in response.resources:
            try:
                msg = unpack_resource(rtype, res)
            except (XdsResourceError, TypeError):
                continue
            name = resource_name(rtype, msg)
            if name in bad:
                continue
            # A `Resource`-wrapped one is stored unwrapped: restore reads plain ones.
            raw = res.value if res.type_url == rtype.type_url else msg.SerializeToString()
            if contains_key_material(_Packed(rtype.type_url, raw)):
                store.pop(name, None)  # keys and certificates stay in memory only
                continue
            store[name] = raw

    def save(self, state: XdsState) -> None:
        """Write the resources `state` uses, now or (throttled) a little later."""
        self._pending = state
        wait = self._last_write + self._min_interval - self._clock()
        if wait <= 0:
            self.flush()
            return
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop: flush() at close writes it
            self._timer = loop.call_later(wait, self.flush)

    def flush(self) -> None:
        """Write the pending state, if any. I/O errors are logged, not raised:
        a full disk must not break config updates."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        state, self._pending = self._pending, None
        if state is None:
            return
        self._last_write = self._clock()
        try:
            self._write(self._body(state))
        except OSError as exc:
            log.warning("cannot write xDS config cache %s: %s", self.path, exc)

    def _body(self, state: XdsState) -> bytes:
        in_use = {
            ResourceType.LISTENER: state.listeners,
            ResourceType.ROUTE_CONFIGURATION: state.route_configs,
            ResourceType.CLUSTER: state.clusters,
            ResourceType.CLUSTER_LOAD_ASSIGNMENT: state.assignments,
        }
        resources: dict[str, dict[str, str]] = {}
        for rtype, names in in_use.items():
            raw = self._raw[rtype]
            for stale in set(raw) - set(names):
                del raw[stale]
            resources[rtype.type_url] = {
                n: base64.b64encode(raw[n]).decode("ascii") for n in sorted(names) if n in raw
            }
        return json.dumps({"resources": resources}, sort_keys=True).encode()

    def _write(self, body: bytes) -> None:
        header = {
            "format": FORMAT,
            "schema": SCHEMA_VERSION,
            **self._identity,
            "written_at": time.time(),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        data = json.dumps(header, sort_keys=True).encode() + b"\n" + body
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A name no other writer uses, in this process or another (mkstemp:
        # O_EXCL, random suffix, mode 0600): with a per-pid name, two clients of
        # one process would truncate each other's file mid-write.
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)
        self.writes += 1
        self._remove_orphans(directory)

    def _remove_orphans(self, directory: Path) -> None:
        """Delete temporary files left by writers killed mid-write; only old
        ones, so a live writer's file is never pulled from under it."""
        cutoff = time.time() - _ORPHAN_AGE
        for orphan in directory.glob(f".{self.path.name}.*.tmp"):
            try:
                if orphan.stat().st_mtime < cutoff:
                    orphan.unlink()
            except OSError:
                continue  # gone already, or not ours to delete: harmless either way
