"""Pieces the gateway and egress tests share: a private CA for HTTPS server
certificates (what an operator's credentialName holds), an HTTPS server
outside the mesh, and `meshctl gateway run` as a real process, stopped on exit."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from meshlab import LocalMesh
from processes import envoy_binary, stop

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class PrivateCa:
    """A self-signed CA: only a client holding `cert_pem` trusts what it signs."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> PrivateCa:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def server_pair(self, host: str) -> tuple[bytes, bytes, int]:
        """(certificate PEM, key PEM, serial) for `host`, signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem, cert.serial_number

    def write_credential(self, directory: Path, name: str, host: str) -> int:
        """A Kubernetes-TLS-Secret-shaped credential `name` for `host`: written
        key first, certificate last (the agent reads the pair when both are
        there); returns the certificate's serial number."""
        cert, key, serial = self.server_pair(host)
        target = directory / name
        target.mkdir(parents=True, exist_ok=True)
        for file, data in (("tls.key", key), ("tls.crt", cert)):
            staged = target / f".{file}.tmp"
            staged.write_bytes(data)
            staged.replace(target / file)
        return serial


def admin_get(address: str, path: str) -> str:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
        return str(response.read().decode())


def listener_ports(admin: str) -> dict[str, int]:
    """Envoy's active listeners by name -> the port each is bound to."""
    listeners = json.loads(admin_get(admin, "/listeners?format=json"))
    return {
        item["name"]: int(item["local_address"]["socket_address"]["port_value"])
        for item in listeners.get("listener_statuses", [])
    }


def http_gateway(name: str, namespace: str) -> dict[str, Any]:
    """A Gateway API Gateway of our class with one HTTP listener on port 80."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "gatewayClassName": "proxyless-mesh",
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
        },
    }


@contextlib.contextmanager
def running_gateway(
    lab: LocalMesh,
    name: str,
    namespace: str,
    credentials: Path | None = None,
    labels: tuple[str, ...] = (),
    free_ports: bool = True,
    kubeconfig: Path | None = None,
) -> Iterator[str]:
    """`meshctl gateway run` (its Envoy on 127.0.0.1, free ports unless told
    to bind the servers' own) with a join token for `namespace/name` and
    `labels` ("k=v"; default istio=<name>); yields Envoy's admin address."""
    extra = ["--free-ports"] if free_ports else []
    if credentials is not None:
        extra += ["--credentials-dir", str(credentials)]
    if kubeconfig is not None:
        extra += ["--kubeconfig", str(kubeconfig)]
    with _running_agent(
        lab, ["gateway", "run", "--name", name], name, namespace, labels, extra
    ) as a:
        yield a


@contextlib.contextmanager
def running_proxy(
    lab: LocalMesh,
    workload: str,
    namespace: str,
    inbound: dict[int, int],
    labels: tuple[str, ...],
    outbound_tcp: tuple[str, ...] = (),
) -> Iterator[str]:
    """`meshctl proxy run` beside `workload` (instance 127.0.0.1; declared port
    -> application port as in `inbound`; outbound on a free port, and TCP
    listeners for `outbound_tcp` "HOST:PORT=LOCAL_PORT"); yields Envoy's
    admin address."""
    extra = ["--instance-ip", "127.0.0.1", "--outbound-port", "0"]
    for port, app in inbound.items():
        extra += ["--inbound", f"{port}={app}"]
    for target in outbound_tcp:
        extra += ["--outbound-tcp", target]
    command = ["proxy", "run", "--workload", workload]
    with _running_agent(lab, command, workload, namespace, labels, extra) as admin:
        yield admin


@contextlib.contextmanager
def _running_agent(
    lab: LocalMesh,
    command: list[str],
    name: str,
    namespace: str,
    labels: tuple[str, ...],
    extra: list[str],
) -> Iterator[str]:
    admin_file = lab.workdir / f"agent-{name}-admin.txt"
    metrics_file = lab.workdir / f"agent-{name}-metrics.txt"
    argv = [
        str(BIN / "meshctl"),
        *command,
        "--namespace",
        namespace,
        "--xds-address",
        lab.xds_address,
        "--ca-address",
        lab.ca_address,
        "--token",
        lab.token(namespace, name),
        "--bind-address",
        "127.0.0.1",
        "--admin-address-path",
        str(admin_file),
        "--envoy",
        envoy_binary(),
        "--metrics-address",
        "127.0.0.1:0",
        "--metrics-address-path",
        str(metrics_file),
        *extra,
    ]
    for label in labels:
        argv += ["--label", label]
    log_path = lab.workdir / f"agent-{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not admin_file.exists() or not admin_file.read_text().strip():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the agent's Envoy admin did not come up"
                time.sleep(0.05)
            yield admin_file.read_text().strip()
        finally:
            stop(proc, grace=10)


def agent_metrics(lab: LocalMesh, name: str) -> str:
    """The agent `name`'s /stats/prometheus (istio_tcp_* and Envoy's statistics)."""
    address = (lab.workdir / f"agent-{name}-metrics.txt").read_text().strip()
    with urllib.request.urlopen(f"http://{address}/stats/prometheus", timeout=10) as page:
        return str(page.read().decode())


def wait_for_listener(admin: str, name: str, timeout: float = 30.0) -> int:
    """The port of listener `name` once Envoy has it active (it waits for its
    secrets by SDS before that) and its socket is listening: Envoy lists a
    warmed listener on the main thread before a worker calls listen(), so on a
    busy machine a connect right after could be refused. The kernel's socket
    table says so without a connection (which a TCP proxy would count)."""
    deadline = time.monotonic() + timeout
    while (port := listener_ports(admin).get(name)) is None:
        assert time.monotonic() < deadline, f"no active listener {name}: {listener_ports(admin)}"
        time.sleep(0.05)
    while port not in _listening_ports():
        assert time.monotonic() < deadline, f"listener {name} on port {port} is not listening"
        time.sleep(0.05)
    return port


def _listening_ports() -> set[int]:
    """Local ports of TCP sockets in LISTEN state (/proc/net/tcp and tcp6)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if fields[3] == "0A":
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class _Handler(BaseHTTPRequestHandler):
    server: _TlsServer

    def do_GET(self) -> None:
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        subject = dict(item[0] for item in peer["subject"])["commonName"] if peer else None
        body = json.dumps({"sni": self.server.sni[-1], "client": subject, "path": self.path})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True
    sni: list[str | None]


@contextlib.contextmanager
def https_server(ca: PrivateCa, host: str, client_ca: PrivateCa | None = None) -> Iterator[int]:
    """An HTTPS server for `host` (certificate from `ca`), demanding a client
    certificate from `client_ca` when given; yields its port."""
    cert, key, _ = ca.server_pair(host)
    with tempfile.TemporaryDirectory() as tmp:  # ssl loads a key only from a file
        (Path(tmp) / "c.pem").write_bytes(cert)
        (Path(tmp) / "k.pem").write_bytes(key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(Path(tmp) / "c.pem", Path(tmp) / "k.pem")
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=client_ca.cert_pem.decode())
    server = _TlsServer(("127.0.0.1", 0), _Handler)
    server.sni = [None]
    context.sni_callback = lambda sock, name, ctx: server.sni.append(name)  # type: ignore[assignment]
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with serving(server) as port:
        yield port


@contextlib.contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[int]:
    """`server` served on a thread; yields its port, then shuts it down."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


API = "api.external.test"
"""The external HTTPS service of the egress tests (SIMPLE origination); also
mtls.external.test (MUTUAL) and wrong.external.test (SIMPLE, wrong names)."""


def _entry(host: str, port: int, address: str = "127.0.0.1") -> dict[str, Any]:
    """A MESH_EXTERNAL service on `address`: a name is resolved by the control
    plane (resolution DNS), an IP taken as is (STATIC)."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": host.split(".")[0]},
        "spec": {
            "hosts": [host],
            "location": "MESH_EXTERNAL",
            "resolution": "STATIC" if address[0].isdigit() else "DNS",
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "endpoints": [{"address": address, "ports": {"http": port}}],
        },
    }


def tls_rule(host: str, tls: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": host.split(".")[0]},
        "spec": {"host": host, "trafficPolicy": {"tls": tls}},
    }


def origination_files(
    tmp_path: Path,
) -> tuple[PrivateCa, PrivateCa, dict[str, Any], dict[str, Any]]:
    """A server CA and a client CA, their files in `tmp_path` (the server CA's
    certificate; a client.shop certificate and key from the client CA), and
    the DestinationRule `tls` of SIMPLE and MUTUAL origination using them."""
    server_ca, client_ca = PrivateCa.create("external CA"), PrivateCa.create("client CA")
    (tmp_path / "ca.pem").write_bytes(server_ca.cert_pem)
    cert, key, _ = client_ca.server_pair("client.shop")
    (tmp_path / "client.pem").write_bytes(cert)
    (tmp_path / "client-key.pem").write_bytes(key)
    simple = {"mode": "SIMPLE", "caCertificates": str(tmp_path / "ca.pem")}
    mutual = {
        **simple,
        "mode": "MUTUAL",
        "clientCertificate": str(tmp_path / "client.pem"),
        "privateKey": str(tmp_path / "client-key.pem"),
    }
    return server_ca, client_ca, simple, mutual


@contextlib.contextmanager
def external_servers(
    lab: LocalMesh, tmp_path: Path, api_address: str = "localhost"
) -> Iterator[None]:
    """Two HTTPS servers outside the mesh (their own CA; the second demands a
    client certificate) and, in `lab`'s config, a ServiceEntry and an
    originating DestinationRule for each of API (endpoint `api_address`: by
    default "localhost", resolution DNS), mtls. and wrong.external.test."""
    server_ca, client_ca, simple, mutual = origination_files(tmp_path)
    with (
        https_server(server_ca, API) as api,
        https_server(server_ca, "mtls.external.test", client_ca) as mtls,
    ):
        docs = [
            _entry(API, api, api_address),  # a name: resolution DNS
            tls_rule(API, simple),
            _entry("mtls.external.test", mtls),
            tls_rule("mtls.external.test", mutual),
            _entry("wrong.external.test", api),
            tls_rule("wrong.external.test", {**simple, "sni": API, "subjectAltNames": ["x.test"]}),
        ]
        lab.write_config("external.yaml", "\n---\n".join(json.dumps(d) for d in docs))
        yield


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        self.wfile.write(self.server.tag + b":" + line)  # type: ignore[attr-defined]


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True


@contextlib.contextmanager
def echo_server(tag: bytes) -> Iterator[int]:
    """A TCP server on 127.0.0.1 answering a line with `tag:line`."""
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    server.tag = tag  # type: ignore[attr-defined]
    with serving(server) as port:
        yield port


def tcp_echo(port: int, line: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(line + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply


def first_echo(port: int) -> bytes:
    """The first answer once the route's clusters have endpoints (until then
    Envoy closes the connection)."""
    deadline = time.monotonic() + 20
    while not (reply := tcp_echo(port, b"hello")):
        assert time.monotonic() < deadline, "the gateway never proxied a connection"
        time.sleep(0.1)
    return reply


def first_passthrough_get(client: httpx.Client, url: str, sni: str) -> httpx.Response:
    """GET `url` with TLS server name `sni` once the gateway has a chain for it
    (until then Envoy closes the connection)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return client.get(url, extensions={"sni_hostname": sni})
        except httpx.ConnectError:
            assert time.monotonic() < deadline, f"no passthrough chain for {sni}"
            time.sleep(0.1)
