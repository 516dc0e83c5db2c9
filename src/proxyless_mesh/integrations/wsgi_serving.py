"""Serving a WSGI app with mesh mTLS under gunicorn.

`gunicorn -k proxyless_mesh.gunicorn.MeshSyncWorker ...`
with the workload's bootstrap in GRPC_XDS_BOOTSTRAP (or
GRPC_XDS_BOOTSTRAP_CONFIG). Each worker process starts its own `Mesh` after
the fork (a mesh's loop thread and its xDS stream do not survive a fork),
follows the control plane's server listener for every bound address
(`mesh.serve_inbound`), and serves each connection by that listener's
PeerAuthentication mode:
- the first byte is peeked (not read): a TLS ClientHello (0x16) gets the
  mTLS handshake with the workload certificate current at that moment;
  plaintext is served (PERMISSIVE) or answered 426 and closed (STRICT);
  DISABLE serves plaintext without peeking.
- the app gets the verified SPIFFE ID in `environ["proxyless_mesh.peer_principal"]`
  (absent over plaintext: the key is set by the server only, a client can
  reach environ solely through HTTP_* keys) and `wsgi.url_scheme` "https",
  behind the WsgiAuthorizationMiddleware fed by `mesh.inbound_policies`.
gunicorn itself gets no certfile/keyfile: the worker does the TLS.
Each worker announces the first bound port as `port_name` (class attribute,
default "http"; None: none) with `mesh.announce_port`, for a `Registration`
without port numbers (gunicorn's sockets listen before workers fork, so the
port answers as soon as it is announced); a refused registration fails the
worker's boot, as a refused `Mesh` start does.
Only the sync worker (one connection at a time per process) is provided,
which is what lets the connection's identity be handed to the request
through the worker without a per-thread map.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
from collections.abc import Iterable
from typing import Any

from gunicorn.workers.sync import SyncWorker  # type: ignore[import-untyped]

from proxyless_mesh.errors import MeshError
from proxyless_mesh.integrations._ext_authz import mesh_ext_authz_client
from proxyless_mesh.integrations._wsgi import (
    PEER_PRINCIPAL_KEY,
    StartResponse,
    WSGIApp,
    WsgiAuthorizationMiddleware,
)
from proxyless_mesh.model import TlsMode
from proxyless_mesh.runtime import InboundRuntime
from proxyless_mesh.security import TLS_HANDSHAKE_BYTE, peer_spiffe_id, plaintext_refusal

__all__ = ["InboundSyncWorker", "accept_mesh_connection"]

log = logging.getLogger("proxyless_mesh.serving")

SNIFF_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0


class Refused(Exception):
    """The connection was answered and closed by the mesh (not for the app)."""


def accept_mesh_connection(
    client: socket.socket, mesh: InboundRuntime, port: int
) -> tuple[socket.socket, str | None]:
    """Classify one accepted connection by the port's mode and, for TLS, do
    the mTLS handshake: returns the socket to serve (SSLSocket after a
    handshake) and the peer's verified SPIFFE ID (None over plaintext).
    Raises Refused when the connection must not reach the app."""
    mode = mesh.inbound_tls_mode(port)
    if mode is TlsMode.DISABLE:
        return client, None
    client.settimeout(SNIFF_TIMEOUT)
    try:
        first = client.recv(1, socket.MSG_PEEK)
    except OSError as exc:
        raise Refused(f"nothing readable: {exc}") from None
    if not first:
        raise Refused("closed before sending anything")
    if first[0] != TLS_HANDSHAKE_BYTE:
        if mode is TlsMode.STRICT:
            _refuse_plaintext(client, first[0])
            raise Refused("plaintext on a STRICT port")
        client.settimeout(None)
        return client, None
    context = mesh.credentials().server_ssl_context(require_client_cert=True)
    client.settimeout(HANDSHAKE_TIMEOUT)
    try:
        tls = context.wrap_socket(client, server_side=True)
    except (ssl.SSLError, OSError) as exc:
        raise Refused(f"TLS handshake failed: {exc}") from None
    principal = peer_spiffe_id(tls)
    if principal is None:
        tls.close()
        raise Refused("no SPIFFE ID in the client certificate")
    tls.settimeout(None)
    return tls, principal


def _refuse_plaintext(client: socket.socket, first: int) -> None:
    """Read the request head (closing with unread bytes would reset the
    connection before the client reads the answer), answer, and let the
    caller close."""
    answer = plaintext_refusal(first)
    if not answer:
        return
    head = b""
    try:
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = client.recv(4096)
            if not chunk:
                break
            head += chunk
        client.sendall(answer)
    except OSError:
        return


class InboundSyncWorker(SyncWorker):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's sync worker serving with mesh mTLS (module docstring), for
    the runtime `open_runtime()` starts: `proxyless_mesh.gunicorn.MeshSyncWorker`
    starts a `Mesh` from the bootstrap."""

    alive: bool  # gunicorn's: the worker loop runs while it is True
    mesh: InboundRuntime | None = None
    port_name: str | None = "http"
    _peer: str | None = None
    _port: int = 0

    def open_runtime(self) -> contextlib.AbstractContextManager[InboundRuntime]:
        """The runtime of this (forked) worker: entering starts it, leaving closes it."""
        raise NotImplementedError("a subclass says which runtime serves (MeshSyncWorker)")

    def init_process(self) -> None:
        """Start the mesh in this (forked) worker, follow each bound address,
        then run gunicorn's loop; the mesh closes when the loop ends."""
        if self.cfg.is_ssl:
            raise MeshError("certfile/keyfile: the mesh does the TLS (its workload certificate)")
        with self.open_runtime() as mesh:
            self.mesh = mesh
            for sock in self.sockets:
                address, port = sock.getsockname()[:2]
                mesh.serve_inbound(port, address)
            if self.port_name is not None and self.sockets:
                port = self.sockets[0].getsockname()[1]
                announced = mesh.announce_port(self.port_name, port)
                announced.result(mesh.ready_timeout + 1.0)
            super().init_process()

    def handle_exit(self, sig: int, frame: Any) -> None:
        """Graceful stop (SIGTERM): deregister and drain first, still serving,
        then let gunicorn's loop end. The drain runs on a thread: a signal
        handler must return at once, and gunicorn's graceful_timeout bounds it.
        Nothing registered: nothing to drain, stop at once."""
        mesh = self.mesh
        if mesh is None or not self.alive or not mesh.registrars:
            super().handle_exit(sig, frame)
            return

        def drain_then_exit() -> None:
            try:
                mesh.withdraw(timeout=max(1.0, float(self.cfg.graceful_timeout) - 1.0))
            except Exception:
                log.exception("draining before exit failed")
            finally:
                self.alive = False
                self._wake()

        threading.Thread(target=drain_then_exit, name="mesh-drain", daemon=True).start()

    def _wake(self) -> None:
        """Wake gunicorn's loop, asleep in select() for up to half its `timeout`
        (15 s by default), so it sees `alive` is False now: a byte on the pipe
        it selects on, as gunicorn's own signal wake-up does."""
        # A full pipe means it is awake anyway; a missing one, that the loop ended.
        with contextlib.suppress(OSError, IndexError):
            os.write(self.PIPE[1], b"1")

    def load_wsgi(self) -> None:
        super().load_wsgi()
        mesh = self.mesh
        if mesh is None:
            raise MeshError("the worker's mesh is not started")
        app: WSGIApp = getattr(self, "wsgi")  # noqa: B009 - set by gunicorn, untyped
        guarded: dict[int, WSGIApp] = {}
        ext_authz = mesh_ext_authz_client(mesh)  # CUSTOM providers, reached through the mesh
        for sock in self.sockets:
            port = sock.getsockname()[1]
            guarded[port] = WsgiAuthorizationMiddleware(
                app, policies=mesh.inbound_policies(port), ext_authz=ext_authz
            )
        self.wsgi = self._with_peer(guarded)

    def _with_peer(self, guarded: dict[int, WSGIApp]) -> WSGIApp:
        """The app of the connection being served: its verified identity put
        into environ, then the authorization middleware of its local port."""

        def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            environ.pop(PEER_PRINCIPAL_KEY, None)
            if self._peer is not None:
                environ[PEER_PRINCIPAL_KEY] = self._peer
                environ["wsgi.url_scheme"] = "https"
            return guarded[self._port](environ, start_response)

        return app

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        mesh = self.mesh
        if mesh is None:
            client.close()
            return
        self._port = listener.getsockname()[1]
        try:
            served, self._peer = accept_mesh_connection(client, mesh, self._port)
        except Refused as exc:
            log.info("refused a connection from %s: %s", addr, exc)
            client.close()
            return
        try:
            super().handle(listener, served, addr)
        finally:
            self._peer = None
