"""A stable address for a control plane that is killed and started again.

A restarted control plane binds port 0 like every process here, so it comes
back on a new port; the client's bootstrap, read once, keeps the old address.
In a deployment a Service address or DNS name bridges that; here a Relay
does: it binds 127.0.0.1:0 once (no port is ever freed and taken again) and
forwards each TCP connection to the control plane it currently points at,
whose address comes from that process's ready file. Pointed at nothing, or
at a dead process, it closes what it accepts, so the client sees the outage
as a refused stream, just as it would without the relay."""

from __future__ import annotations

import contextlib
import json
import socket
import threading

from meshlab import LocalMesh

from proxyless_mesh.bootstrap import Bootstrap


class Relay:
    def __init__(self, target: str | None = None) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.to_client_bytes = 0  # forwarded from the control plane since point_at
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def point_at(self, target: str | None) -> None:
        """New connections go to `target` ("HOST:PORT"); open ones are cut."""
        with self._lock:
            self._target = target
            self.to_client_bytes = 0
            cut, self._open = self._open, set()
        for sock in cut:
            _close(sock)

    def close(self) -> None:
        self.point_at(None)
        _close(self._listener)
        self._thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                target = self._target
            upstream = _connect(target) if target else None
            if upstream is None:
                _close(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            for src, dst, down in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, down), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if to_client:
                    with self._lock:
                        self.to_client_bytes += len(data)
                dst.sendall(data)
        except OSError:
            pass  # either side gone: both are closed below
        for sock in (src, dst):
            with self._lock:
                self._open.discard(sock)
            _close(sock)


def _connect(target: str) -> socket.socket | None:
    host, _, port = target.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=2)
    except OSError:
        return None
    sock.settimeout(None)  # the timeout was for connecting; a stream may idle
    return sock


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def bootstrap_for(lab: LocalMesh, node_id: str, addresses: list[str]) -> Bootstrap:
    """meshctl's bootstrap for `node_id` with `xds_servers` listing `addresses`
    in order (meshctl writes only one): relays, or several control planes."""
    doc = json.loads(Bootstrap.from_file(lab.bootstrap(node_id)).to_json())
    doc["xds_servers"] = [
        {"server_uri": a, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}
        for a in addresses
    ]
    return Bootstrap.from_json(json.dumps(doc))
