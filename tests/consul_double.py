"""A Consul test double: the few HTTP API endpoints the mesh uses, with Consul's
documented semantics (https://developer.hashicorp.com/consul/api-docs).

- GET  /v1/catalog/services                  {name: [tags]}
- GET  /v1/health/service/<name>[?passing]   [{Node, Service, Checks}]
  both with blocking queries: `?index=N&wait=Ws` blocks until the index passes N
  or the wait ends; every answer carries `X-Consul-Index`. `set_index()` can move
  the index backwards (a restored Consul) so clients' reset logic is exercised.
- PUT  /v1/agent/service/register            JSON {Name, ID, Address, Port, Tags,
                                             Meta, Check: {TTL}} (case-insensitive)
- PUT  /v1/agent/service/deregister/<id>
- PUT  /v1/agent/check/pass|warn|fail/<id>, PUT /v1/agent/check/update/<id> {Status}
- ACL: with `token` set, requests without `X-Consul-Token` (or `?token=`) equal to
  it get 403 "Permission denied", as Consul with default-deny ACLs.
A TTL check that is not passed within its TTL turns critical (a ticker thread).
`fail_requests(n)` answers the next n reads with 500, to test error backoff;
`stop()`/`start()` keep the port, so "Consul went away and came back" is real.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class _Instance:
    id: str
    name: str
    address: str
    port: int
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    node: str = "node-1"
    node_meta: dict[str, str] = field(default_factory=dict)
    status: str = "passing"
    ttl: float | None = None
    passed_at: float = field(default_factory=time.monotonic)


def _duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for suffix in ("ms", "s", "m"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


class ConsulDouble:
    def __init__(self, *, token: str = "", datacenter: str = "dc1") -> None:
        self.token = token
        self.datacenter = datacenter
        self.instances: dict[str, _Instance] = {}
        self.index = 1
        self.requests: list[str] = []
        self._failures = 0
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._running = False
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> str:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                double._handle(self, "GET")

            def do_PUT(self) -> None:
                double._handle(self, "PUT")

        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._running = True
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        return self.address

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Close the listener (connections are refused) but keep state and port."""
        server, self._server = self._server, None
        if server is not None:
            with self._cond:
                self._cond.notify_all()
            server.shutdown()
            server.server_close()

    def close(self) -> None:
        self._running = False
        self.stop()
        if self._ticker is not None:
            self._ticker.join(2)

    # -- state changes (tests call these) ---------------------------------------------

    def _bump(self) -> None:
        self.index += 1
        self._cond.notify_all()

    def register(self, name: str, address: str, port: int, **fields: Any) -> str:
        with self._cond:
            sid = fields.pop("id", None) or f"{name}-{address}-{port}"
            self.instances[sid] = _Instance(sid, name, address, port, **fields)
            self._bump()
            return str(sid)

    def update(self, sid: str, **fields: Any) -> None:
        with self._cond:
            for key, value in fields.items():
                setattr(self.instances[sid], key, value)
            self._bump()

    def deregister(self, sid: str) -> None:
        with self._cond:
            self.instances.pop(sid, None)
            self._bump()

    def set_index(self, index: int) -> None:
        with self._cond:
            self.index = index
            self._cond.notify_all()

    def fail_requests(self, count: int) -> None:
        with self._cond:
            self._failures = count
            self._cond.notify_all()

    # -- HTTP ------------------------------------------------------------------------

    def _tick(self) -> None:
        while self._running:
            time.sleep(0.05)
            with self._cond:
                now = time.monotonic()
                for inst in self.instances.values():
                    if inst.ttl and inst.status == "passing" and now - inst.passed_at > inst.ttl:
                        inst.status = "critical"
                        self._bump()

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(req.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        self.requests.append(f"{method} {req.path}")
        token = req.headers.get("X-Consul-Token") or query.get("token", "")
        if self.token and token != self.token:
            return self._send(req, 403, "Permission denied")
        length = int(req.headers.get("Content-Length") or 0)
        body = json.loads(req.rfile.read(length) or b"null") if length else None
        path = url.path
        if method == "GET":
            with self._cond:
                if self._failures > 0:
                    self._failures -= 1
                    return self._send(req, 500, "rpc error: No cluster leader")
            if query.get("dc") and query["dc"] != self.datacenter:
                return self._send(req, 500, f'No path to datacenter "{query["dc"]}"')
            self._block(query)
            with self._cond:
                if path == "/v1/catalog/services":
                    services: dict[str, list[str]] = {"consul": []}
                    for inst in self.instances.values():
                        tags = services.setdefault(inst.name, [])
                        tags.extend(t for t in inst.tags if t not in tags)
                    return self._send(req, 200, services)
                if path.startswith("/v1/health/service/"):
                    name = path.rsplit("/", 1)[1]
                    passing = "passing" in query
                    entries = [
                        self._entry(i)
                        for i in sorted(self.instances.values(), key=lambda i: i.id)
                        if i.name == name and (not passing or i.status == "passing")
                    ]
                    return self._send(req, 200, entries)
            return self._send(req, 404, "Not found")
        return self._put(req, path, body)

    def _put(self, req: BaseHTTPRequestHandler, path: str, body: Any) -> None:
        with self._cond:
            if path == "/v1/agent/service/register":
                b = {k.lower(): v for k, v in (body or {}).items()}
                checks = b.get("checks") or ([b["check"]] if b.get("check") else [])
                ttl = next((c.get("TTL") or c.get("ttl") for c in checks if c), None)
                sid = b.get("id") or b["name"]
                self.instances[sid] = _Instance(
                    sid,
                    b["name"],
                    b.get("address") or "127.0.0.1",
                    int(b.get("port") or 0),
                    tags=list(b.get("tags") or []),
                    meta=dict(b.get("meta") or {}),
                    status="critical" if ttl else "passing",  # Consul: TTL checks start critical
                    ttl=_duration(ttl) if ttl else None,
                )
                self._bump()
                return self._send(req, 200, None)
            if path.startswith("/v1/agent/service/deregister/"):
                self.instances.pop(path.rsplit("/", 1)[1], None)
                self._bump()
                return self._send(req, 200, None)
            for verb, status in (("pass", "passing"), ("warn", "warning"), ("fail", "critical")):
                if path.startswith(f"/v1/agent/check/{verb}/"):
                    return self._check(req, path.rsplit("/", 1)[1], status)
            if path.startswith("/v1/agent/check/update/"):
                status = {k.lower(): v for k, v in (body or {}).items()}.get("status", "")
                return self._check(req, path.rsplit("/", 1)[1], status)
        return self._send(req, 404, "Not found")

    def _check(self, req: BaseHTTPRequestHandler, check_id: str, status: str) -> None:
        sid = check_id.removeprefix("service:")
        inst = self.instances.get(sid)
        if inst is None:
            return self._send(req, 500, f'CheckID "{check_id}" does not have associated TTL')
        inst.passed_at = time.monotonic()
        if inst.status != status:
            inst.status = status
            self._bump()
        return self._send(req, 200, None)

    def _block(self, query: dict[str, str]) -> None:
        """Consul's blocking query: wait while the index has not passed `index`."""
        if "index" not in query:
            return
        wanted = int(query["index"])
        deadline = time.monotonic() + min(_duration(query.get("wait", "300s")), 600)
        with self._cond:
            while self.index <= wanted and self._server is not None and self._failures == 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.index < wanted:  # backwards: answer at once
                    return
                self._cond.wait(remaining)

    def _entry(self, inst: _Instance) -> dict[str, Any]:
        return {
            "Node": {
                "Node": inst.node,
                "Address": inst.address,
                "Datacenter": self.datacenter,
                "Meta": dict(inst.node_meta),
            },
            "Service": {
                "ID": inst.id,
                "Service": inst.name,
                "Tags": list(inst.tags),
                "Address": inst.address,
                "Port": inst.port,
                "Meta": dict(inst.meta),
                "Weights": {"Passing": 1, "Warning": 1},
            },
            "Checks": [
                {"CheckID": f"service:{inst.id}", "Status": inst.status, "ServiceID": inst.id}
            ],
        }

    def _send(self, req: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.send_header("X-Consul-Index", str(self.index))
        req.send_header("X-Consul-KnownLeader", "true")
        try:
            req.end_headers()
            req.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # A blocking query whose caller gave up (a watcher stopping): as
            # Consul does, drop the answer.
            return
