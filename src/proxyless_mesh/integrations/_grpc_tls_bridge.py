"""Library-mode gRPC over mesh mTLS, through an in-process TLS bridge.

grpcio cannot verify a SPIFFE ID: its TLS checks the server's name against
DNS/IP SANs only (even `grpc.ssl_target_name_override` set to the SPIFFE URI
fails its hostname check), and mesh certificates carry a URI SAN alone. So a
library-mode sub-channel to an endpoint of a cluster that requires mTLS is a
plaintext grpcio channel to a Unix socket in a private (0700) directory, and
the bridge behind that socket does the TLS in Python, as the httpx transports
do: for each connection grpcio opens, a TLS connection to the endpoint with
the workload certificate current at that moment (ALPN h2), the server's SPIFFE
ID checked against the cluster's expected ones (`verify_peer`) before a byte
is forwarded, then bytes copied both ways. A server with another identity is
never sent anything; the bridge logs why and closes, and grpcio sees the
connection fail (UNAVAILABLE, retried as a connect failure).

The bridge runs on its own asyncio loop thread, one per mesh channel (sync or
aio: the caller's loop never runs it), started on the first mTLS endpoint and
stopped with the channel. Only this process's user can open the sockets. Cost:
every message crosses Python on the way out and back (the TLS hop is Python's
`ssl`, like the httpx path), which plaintext sub-channels do not pay.

Which endpoints need it, and which SPIFFE IDs each must present, is read
from the snapshot (`TlsIndex`: clusters with upstream TLS and their
endpoints), re-indexed when the snapshot changes, so a config change that
turns mTLS on or off takes effect for new calls; sub-channels are kept per
(endpoint, expected identities).

TLS origination (DestinationRule `tls` SIMPLE/MUTUAL, no mesh identity
needed) is grpcio's own TLS when its check is Istio's: a channel with
`grpc.ssl_channel_credentials` from the rule's files and the SNI as
`grpc.ssl_target_name_override`, whose hostname check is the SNI-name check
Envoy makes when the rule names no other `subjectAltNames`. A rule whose
names differ from the SNI goes through the bridge instead, which sends the SNI
and checks the names as the httpx transports do (`_origination`); so does a
rule whose files cannot be read, and the bridge then refuses each connection
with the reason logged (fail closed).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import shutil
import socket
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from proxyless_mesh.errors import MeshError
from proxyless_mesh.integrations._origination import origination_context, verify_names
from proxyless_mesh.integrations._tls_transport import CredentialsSource, mesh_credentials
from proxyless_mesh.model import Endpoint, UpstreamTls
from proxyless_mesh.security import verify_peer

if TYPE_CHECKING:
    from proxyless_mesh.runtime import MeshSnapshot, Runtime

__all__ = ["MeshSubChannels", "TlsBridge", "TlsIndex"]

log = logging.getLogger("proxyless_mesh")

_ALPN_H2 = ("h2",)
_CONNECT_TIMEOUT = 10.0
_BUFFER = 64 * 1024
_Expected = frozenset[str]
_Security = _Expected | UpstreamTls  # mesh mTLS (the IDs), or TLS origination (the rule)


_CONFLICT = "(none: this address is in clusters that expect different SPIFFE IDs)"


class TlsIndex:
    """Which endpoints of a snapshot need mTLS, and the SPIFFE IDs each must
    present (an empty set: any ID the mesh roots vouch for), or TLS
    origination (the cluster's UpstreamTls).

    Keyed by the endpoint object first: each cluster's endpoints are its own
    objects, so one address in two clusters (two services on one server)
    gets each cluster's own IDs, as Envoy checks per cluster. An endpoint
    this snapshot did not make (picked from a balancer of an older one) falls
    back to its address, with the IDs every cluster there agrees on; when
    they disagree, none is accepted (fail closed)."""

    def __init__(self, snapshot: MeshSnapshot) -> None:
        self.snapshot = snapshot
        self.by_object: dict[int, _Security] = {}
        by_address: dict[tuple[str, int], list[_Security]] = {}
        for source in snapshot.sources.values():
            cluster, assignment = source.cluster, source.assignment
            if cluster is None or cluster.tls is None or assignment is None:
                continue
            expected: _Security = frozenset(cluster.tls.expected_spiffe_ids)
            if cluster.tls.origination is not None:
                expected = cluster.tls
            for locality in assignment.localities:
                for endpoint in locality.endpoints:
                    self.by_object[id(endpoint)] = expected
                    by_address.setdefault((endpoint.address, endpoint.port), []).append(expected)
        self.by_address = {key: _agreed(sets) for key, sets in by_address.items()}

    def expected(self, endpoint: Endpoint) -> _Security | None:
        """The IDs `endpoint` must present, or its origination; None: plaintext."""
        found = self.by_object.get(id(endpoint))
        if found is not None:
            return found
        return self.by_address.get((endpoint.address, endpoint.port))


def _agreed(found: list[_Security]) -> _Security:
    rules = set(s for s in found if isinstance(s, UpstreamTls))
    sets = [s for s in found if not isinstance(s, UpstreamTls)]
    if rules:  # origination only if every cluster there originates alike
        return rules.pop() if len(rules) == 1 and not sets else frozenset({_CONFLICT})
    named = [s for s in sets if s]
    if not named:
        return frozenset()
    common = frozenset.intersection(*named)
    return common or frozenset({_CONFLICT})


class TlsBridge:
    """Unix-socket listeners in a private directory, each bridging to one
    endpoint over verified mTLS, served on a loop thread of their own."""

    def __init__(self, credentials: CredentialsSource | None) -> None:
        self._credentials = credentials
        self._dir = Path(tempfile.mkdtemp(prefix="proxyless-mesh-grpc-"))  # 0700
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._numbers = itertools.count()  # socket names; listen() runs under a lock
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="proxyless-mesh-grpc-tls", daemon=True
        )
        self._thread.start()
        self._finalizer = weakref.finalize(
            self, _stop, self._loop, self._thread, self._servers, self._dir
        )

    def listen(self, address: str, port: int, expected: _Security) -> str:
        """The `unix:` target of a new listener bridging to address:port.
        The socket listens before this returns (connections wait in its
        backlog until the loop serves it), so grpcio can connect at once."""
        path = self._dir / f"{next(self._numbers)}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen(128)
        sock.setblocking(False)

        # The loop must not hold the bridge itself (only the credentials), so a
        # channel dropped without close() still stops it when collected.
        serve = functools.partial(_bridge, self._credentials, address, port, expected)
        servers = self._servers

        async def start() -> None:
            servers.append(await asyncio.start_unix_server(serve, sock=sock))

        asyncio.run_coroutine_threadsafe(start(), self._loop)
        return f"unix:{path}"

    def close(self) -> None:
        self._finalizer()


async def _bridge(
    credentials: CredentialsSource | None,
    address: str,
    port: int,
    expected: _Security,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """One connection grpcio opened: mTLS to the endpoint, the server's
    SPIFFE ID checked (or TLS origination, the rule's names checked), then
    bytes both ways until either side closes."""
    peer = f"{address}:{port}"
    try:
        if isinstance(expected, UpstreamTls):
            assert expected.origination is not None  # TlsIndex makes it so
            context = origination_context(expected.origination, _ALPN_H2)
            sni = expected.sni or None
        elif credentials is not None:
            context, sni = credentials().client_ssl_context(_ALPN_H2), None
        else:
            raise MeshError("no workload certificate for mesh mTLS")
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(address, port, ssl=context, server_hostname=sni),
            _CONNECT_TIMEOUT,
        )
    except (OSError, TimeoutError, MeshError) as exc:
        log.warning("library-mode gRPC: no TLS connection to %s: %s", peer, exc)
        writer.close()
        return
    try:
        ssl_object = up_writer.get_extra_info("ssl_object")
        if isinstance(expected, UpstreamTls):
            verify_names(ssl_object, origination_names(expected), peer=peer)
        else:
            verify_peer(ssl_object, expected, peer=peer)
    except MeshError as exc:  # PeerIdentityError: nothing was sent
        log.warning("library-mode gRPC: %s", exc)
        up_writer.close()
        writer.close()
        return
    try:
        await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
    except asyncio.CancelledError:
        # The bridge is stopping (each _copy closed its side). Ending
        # normally, not cancelled: asyncio's stream server (3.11) logs a
        # traceback for a cancelled connection task.
        return


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction until EOF or an error; closing the writer ends the other
    direction too (its reader sees the connection go)."""
    try:
        while data := await reader.read(_BUFFER):
            writer.write(data)
            await writer.drain()
    except OSError:  # a reset on either side: the connection is over
        pass
    finally:
        writer.close()


async def _shutdown(loop: asyncio.AbstractEventLoop, servers: list[asyncio.AbstractServer]) -> None:
    """Stop listening, cancel every bridged connection (their `_copy` closes
    both sides), then stop the loop."""
    for server in servers:
        server.close()
    tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    loop.stop()


def _stop(
    loop: asyncio.AbstractEventLoop,
    thread: threading.Thread,
    servers: list[asyncio.AbstractServer],
    directory: Path,
) -> None:
    if thread.is_alive():
        asyncio.run_coroutine_threadsafe(_shutdown(loop, servers), loop)
        thread.join(5.0)
    if not thread.is_alive():
        loop.close()
    shutil.rmtree(directory, ignore_errors=True)


def origination_names(tls: UpstreamTls) -> frozenset[str]:
    """The names the server's certificate must have: the rule's
    subjectAltNames, else the SNI name (Istio's default)."""
    assert tls.origination is not None
    return frozenset(tls.origination.subject_alt_names or ((tls.sni,) if tls.sni else ()))


def grpc_origination_credentials(tls: UpstreamTls) -> Any | None:
    """grpcio channel credentials for `tls`, when grpcio's own check (the
    server's name against `ssl_target_name_override`, the SNI) is the rule's
    check; None when it is not, or a file cannot be read (logged)."""
    rule = tls.origination
    assert rule is not None
    if not tls.sni or origination_names(tls) != {tls.sni}:
        return None
    try:
        roots = Path(rule.ca_file).read_bytes() if rule.ca_file else None
        pair = rule.cert_file and rule.key_file
        key = Path(rule.key_file).read_bytes() if pair else None
        chain = Path(rule.cert_file).read_bytes() if pair else None
    except OSError as exc:
        log.warning("library-mode gRPC: cannot use the TLS origination files: %s", exc)
        return None
    return grpc.ssl_channel_credentials(roots, key, chain)


class MeshSubChannels:
    """One grpcio channel per endpoint (and expected identities), created on
    first use: plaintext to the endpoint, grpcio's TLS for origination it can
    check, or through the TlsBridge (mTLS, other origination). Lookups are
    lock-free dict reads."""

    def __init__(
        self,
        mesh: Runtime,
        options: Sequence[tuple[str, Any]],
        factory: Callable[..., Any],
        secure_factory: Callable[..., Any],
    ) -> None:
        self._mesh = mesh
        self._credentials = mesh_credentials(mesh)
        self._options = tuple(options)
        self._factory = factory
        self._secure_factory = secure_factory
        self._channels: dict[tuple[str, int, _Security | None], Any] = {}
        self._lock = threading.Lock()  # creation only
        self._index: TlsIndex | None = None
        self._bridge: TlsBridge | None = None

    def expected(self, endpoint: Endpoint) -> _Security | None:
        """The SPIFFE IDs an mTLS endpoint must present, or its origination
        rule; None for plaintext (mesh mTLS also from a mesh without an
        identity, as the httpx transports do; origination needs none)."""
        snapshot = self._mesh.snapshot
        index = self._index
        if index is None or index.snapshot is not snapshot:
            self._index = index = TlsIndex(snapshot)
        found = index.expected(endpoint)
        if self._credentials is None and not isinstance(found, UpstreamTls):
            return None
        return found

    def get(self, endpoint: Endpoint) -> Any:
        expected = self.expected(endpoint)
        key = (endpoint.address, endpoint.port, expected)
        channel = self._channels.get(key)
        if channel is None:
            with self._lock:
                channel = self._channels.get(key)
                if channel is None:
                    channel = self._new(endpoint, expected)
                    self._channels[key] = channel
        return channel

    def _new(self, endpoint: Endpoint, expected: _Security | None) -> Any:
        host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
        if expected is None:
            return self._factory(f"{host}:{endpoint.port}", options=self._options)
        if isinstance(expected, UpstreamTls):
            credentials = grpc_origination_credentials(expected)
            if credentials is not None:
                options = (*self._options, ("grpc.ssl_target_name_override", expected.sni))
                return self._secure_factory(f"{host}:{endpoint.port}", credentials, options=options)
        if self._bridge is None:
            self._bridge = TlsBridge(self._credentials)
        target = self._bridge.listen(endpoint.address, endpoint.port, expected)
        return self._factory(target, options=self._options)

    def all(self) -> list[Any]:
        return list(self._channels.values())

    def close_bridge(self) -> None:
        """Stop the bridge (after the channels using it were closed)."""
        if self._bridge is not None:
            self._bridge.close()
