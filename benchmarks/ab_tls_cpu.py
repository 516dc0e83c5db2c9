"""Client CPU per request of the mTLS transport's TLS streams, A/B (issue 25).

    python benchmarks/ab_tls_cpu.py [--rounds 15] [--requests 2000]

Whole-process CPU in ab_tls.py moves by more than the effect here on a busy
machine; this narrows it like ab.py: one client process, the requesting
thread's CPU (time.thread_time), the two variants alternating every round
against the same server, the least disturbed round (min) and the lower
quartile compared. The server is the library's uvicorn protocol (STRICT,
uvloop) in a child process, certificates from an in-process CA; each client
is `MtlsTransport` (the mesh's mTLS transport without routing) posting 1 KB
and reading 1 KB on one kept-alive connection. Variant A: httpcore's TLS
stream (`PROXYLESS_MESH_TLS_STREAM=httpcore`); B: the direct stream.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography import x509
from mesh_control_plane.ca import CaSettings, CertificateAuthority

from proxyless_mesh.integrations import _tls_stream
from proxyless_mesh.integrations._serving import MeshUvicornConfig
from proxyless_mesh.integrations._tls_transport import MtlsTransport
from proxyless_mesh.model import TlsMode
from proxyless_mesh.security import Credentials, SpiffeId, make_csr, new_private_key
from proxyless_mesh.security._inbound import InboundTls

CLIENT = SpiffeId("cluster.local", "default", "bench-client").uri
SERVER = SpiffeId("cluster.local", "default", "bench-server").uri
PAYLOAD = b"x" * 1024


def issue(ca: CertificateAuthority, uri: str) -> Credentials:
    key = new_private_key()
    csr = x509.load_pem_x509_csr(make_csr(key, SpiffeId.parse(uri)).encode())
    chain = ca.sign(csr, uri, 3600)
    return Credentials(key, tuple(chain[:-1]), tuple(ca.trust_bundle()), fetched_at=0.0)


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-length", b"1024")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": PAYLOAD})


def serve(sock: socket.socket, creds: Credentials) -> None:
    inbound = InboundTls(credentials=lambda: creds, mode=lambda port: TlsMode.STRICT)
    config = MeshUvicornConfig(app, inbound=inbound, http="httptools", log_level="warning")
    config.lifespan = "off"
    uvicorn.Server(config).run(sockets=[sock])


def client(creds: Credentials, direct: bool) -> httpx.Client:
    """A client whose one connection uses the chosen stream (the switch is
    read when the connection is made)."""
    _tls_stream.DIRECT = direct
    made = httpx.Client(transport=MtlsTransport(lambda: creds, {SERVER}), timeout=30)
    return made


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mesh-ab-tls-cpu-") as tmp:
        ca = CertificateAuthority.open(CaSettings(Path(tmp) / "ca"))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/bytes"
        server = multiprocessing.get_context("fork").Process(
            target=serve, args=(sock, issue(ca, SERVER)), daemon=True
        )
        server.start()
        try:
            creds = issue(ca, CLIENT)
            variants = {
                "httpcore's stream": client(creds, False),
                "direct stream": client(creds, True),
            }
            cpu: dict[str, list[float]] = {name: [] for name in variants}
            for name, c in variants.items():  # connect now, with the switch as set for it
                _tls_stream.DIRECT = name == "direct stream"
                for _ in range(300):
                    c.post(url, content=PAYLOAD)
            for r in range(args.rounds):
                order = list(variants) if r % 2 == 0 else list(reversed(variants))
                for name in order:
                    c = variants[name]
                    started = time.thread_time()
                    for _ in range(args.requests):
                        c.post(url, content=PAYLOAD)
                    cpu[name].append((time.thread_time() - started) / args.requests * 1e6)
            for c in variants.values():
                c.close()
        finally:
            server.terminate()
            server.join(10)
    print(f"client thread CPU µs per request, {args.rounds} rounds x {args.requests}:")
    print("| stream | min | lower quartile | median |\n|---|---:|---:|---:|")
    for name, values in cpu.items():
        q1, q2, _ = statistics.quantiles(values, n=4)
        print(f"| {name} | {min(values):.1f} | {q1:.1f} | {q2:.1f} |")
    a, b = cpu.values()
    paired = sorted(y - x for x, y in zip(a, b, strict=True))
    print(
        f"direct minus httpcore's, per round (paired): median {statistics.median(paired):+.1f},"
        f" quartiles {paired[len(paired) // 4]:+.1f} / {paired[3 * len(paired) // 4]:+.1f}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
