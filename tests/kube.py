"""A real Kubernetes control plane for the tests: etcd, kube-apiserver and
kube-controller-manager, built from Go modules by `make kube-tools` into a cache
outside the clone (tools/build-kube.sh), started here on 127.0.0.1.

No kubelet: a test creates Pods, binds them to Nodes it created and marks them
Ready through the status subresource; the real endpointslice controller then
writes EndpointSlices. The admin identity is a client certificate in
`system:masters`; ServiceAccount tokens are signed with a key generated here.

Go servers cannot report a port 0 bind, and they do not set SO_REUSEPORT (so
`processes.reserved_port` cannot hold one for them): each port is a free one
picked just before the start, and a start that loses the race is retried.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from processes import stop

VERSION = "v1.37.2"
TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
START_TIMEOUT = 90.0  # seconds for etcd + apiserver to be ready on a busy 2-core machine


def tools_dir() -> Path:
    """Where `make kube-tools` put the binaries (KUBE_TOOLS_DIR overrides)."""
    default = Path.home() / ".cache" / "proxyless-mesh" / f"kube-{VERSION}"
    return Path(os.environ.get("KUBE_TOOLS_DIR", default))


def tool(name: str) -> str:
    path = tools_dir() / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} missing: `make kube-tools` builds the Kubernetes test binaries")
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- certificates --------------------------------------------------------------


def _name(cn: str, org: str = "") -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    *,
    server: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if server:
        sans: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
    else:
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _write_pki(pki: Path) -> None:
    """ca.crt, apiserver.{crt,key}, admin.{crt,key}, sa.{key,pub}."""
    pki.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("proxyless-mesh test cluster CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, subject, server in (
        ("apiserver", _name("kube-apiserver"), True),
        ("admin", _name("admin", "system:masters"), False),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(ca_key, ca_name, subject, key, server=server)
        (pki / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (pki / f"{name}.key").write_bytes(_pem_key(key))
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "sa.key").write_bytes(_pem_key(sa_key))
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


# -- the cluster -----------------------------------------------------------------


def _log_tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _etcd_argv(data: Path, port: int) -> list[str]:
    peer = free_port()
    client = f"http://127.0.0.1:{port}"
    return [
        tool("etcd"),
        "--data-dir", str(data),
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"default=http://127.0.0.1:{peer}",
        "--unsafe-no-fsync",  # test data: durability is not the point
        "--log-level", "warn",
    ]  # fmt: skip


def _apiserver_argv(pki: Path, etcd: int, port: int) -> list[str]:
    return [
        tool("kube-apiserver"),
        "--etcd-servers", f"http://127.0.0.1:{etcd}",
        "--bind-address", "127.0.0.1",
        "--advertise-address", "127.0.0.1",
        # The `kubernetes` Service's endpoints may not be loopback: no reconciler.
        "--endpoint-reconciler-type", "none",
        "--secure-port", str(port),
        "--tls-cert-file", str(pki / "apiserver.crt"),
        "--tls-private-key-file", str(pki / "apiserver.key"),
        "--client-ca-file", str(pki / "ca.crt"),
        "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
        "--service-account-key-file", str(pki / "sa.pub"),
        "--service-account-signing-key-file", str(pki / "sa.key"),
        "--service-cluster-ip-range", "10.96.0.0/16",
        "--authorization-mode", "RBAC",
        "--profiling=false",
        "--v", "1",
    ]  # fmt: skip


def _kcm_argv(pki: Path, kubeconfig: Path) -> list[str]:
    return [
        tool("kube-controller-manager"),
        "--kubeconfig", str(kubeconfig),
        # Only what a cluster without kubelets needs for the mesh: EndpointSlices
        # from Pods, and ServiceAccounts (with their tokens) in each namespace.
        "--controllers", "endpointslice-controller,serviceaccount-controller,"
        "serviceaccount-token-controller",
        "--service-account-private-key-file", str(pki / "sa.key"),
        "--root-ca-file", str(pki / "ca.crt"),
        "--use-service-account-credentials=false",
        "--leader-elect=false",
        "--bind-address", "127.0.0.1",
        "--secure-port", "0",
        "--v", "1",
    ]  # fmt: skip


class KubeCluster:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1; `close()` stops
    them all. The API server can be stopped and started again on its port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pki = workdir / "pki"
        self.kubeconfig = workdir / "admin.kubeconfig"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.etcd_port = 0
        self.api_port = 0

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context

    def client(self) -> httpx.Client:
        """An admin client of the API server."""
        return httpx.Client(base_url=self.server, verify=self.ssl_context(), timeout=30)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        _write_pki(self.pki)
        self.etcd_port = self._on_free_port(
            "etcd",
            lambda port: _etcd_argv(self.workdir / "etcd", port),
            lambda port: httpx.get(f"http://127.0.0.1:{port}/health").is_success,
        )
        self.api_port = self._on_free_port(
            "kube-apiserver",
            lambda port: _apiserver_argv(self.pki, self.etcd_port, port),
            self._api_ready,
        )
        self._write_kubeconfig()
        self._spawn("kube-controller-manager", _kcm_argv(self.pki, self.kubeconfig))

    def stop_apiserver(self) -> None:
        stop(self.procs.pop("kube-apiserver"))

    def start_apiserver(self) -> None:
        """Start it again on the same port (clients keep their address). The
        controller manager is restarted with it: it is the tests' stand-in for a
        cluster's, and client-go's backoff after a long outage (up to a minute)
        would only slow the tests that follow."""
        argv = _apiserver_argv(self.pki, self.etcd_port, self.api_port)
        proc = self._spawn("kube-apiserver", argv)
        deadline = time.monotonic() + START_TIMEOUT
        if not self._wait(proc, lambda: self._api_ready(self.api_port), "kube-apiserver", deadline):
            raise AssertionError(f"kube-apiserver lost its port {self.api_port}")
        stop(self.procs.pop("kube-controller-manager"))
        self._spawn("kube-controller-manager", _kcm_argv(self.pki, self.kubeconfig))

    def close(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                stop(proc)

    # -- admin operations -----------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None) -> str:
        """Run the built kubectl as the admin; its stdout (stderr in the error)."""
        done = subprocess.run(
            [*self.kubectl_argv(), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def kubectl_argv(self) -> list[str]:
        return [tool("kubectl"), "--kubeconfig", str(self.kubeconfig)]

    def apply(self, *objects: dict[str, Any]) -> str:
        """`kubectl apply` of the objects."""
        return self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))

    def service_account_kubeconfig(self, namespace: str, account: str, path: Path) -> Path:
        """A kubeconfig at `path` that speaks as ServiceAccount `namespace/account`
        (an hour's token from the TokenRequest API), namespace as in its Pod."""
        with self.client() as api:
            response = api.post(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
                json={"spec": {"expirationSeconds": 3600}},
            )
            assert response.is_success, response.text
            token = response.json()["status"]["token"]
        config = json.loads(self.kubeconfig.read_text())
        config["users"] = [{"name": "admin", "user": {"token": token}}]
        config["contexts"][0]["context"]["namespace"] = namespace
        path.write_text(json.dumps(config))
        return path

    # -- internals ------------------------------------------------------------------

    def _api_ready(self, port: int) -> bool:
        url = f"https://127.0.0.1:{port}/readyz"
        return httpx.get(url, verify=self.ssl_context()).is_success

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def _on_free_port(self, name: str, argv_for: Any, ready: Any) -> int:
        """Start `name` on a free port (retrying a lost race); its port once ready."""
        deadline = time.monotonic() + START_TIMEOUT
        for _attempt in range(3):
            port = free_port()
            proc = self._spawn(name, argv_for(port))
            if self._wait(proc, functools.partial(ready, port), name, deadline):
                return port
            self.procs.pop(name)
        raise AssertionError(f"{name}: no free port after 3 tries")

    def _wait(self, proc: subprocess.Popen[bytes], ready: Any, name: str, deadline: float) -> bool:
        """Poll `ready()`; False when the process exited having lost its port."""
        log = self.workdir / f"{name}.log"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                if "address already in use" in _log_tail(log, 200):
                    return False
                raise AssertionError(f"{name} exited ({proc.returncode}):\n{_log_tail(log)}")
            with contextlib.suppress(httpx.HTTPError, OSError):
                if ready():
                    return True
            time.sleep(0.2)
        raise AssertionError(f"{name} not ready in {START_TIMEOUT:.0f} s:\n{_log_tail(log)}")

    def _write_kubeconfig(self) -> None:
        cluster = {"server": self.server, "certificate-authority": str(self.ca_file)}
        user = {
            "client-certificate": str(self.pki / "admin.crt"),
            "client-key": str(self.pki / "admin.key"),
        }
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": "admin", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
            "current-context": "test",
        }
        self.kubeconfig.write_text(json.dumps(config))


@contextlib.contextmanager
def kube_cluster(workdir: Path) -> Iterator[KubeCluster]:
    cluster = KubeCluster(workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


# -- Pods without a kubelet -----------------------------------------------------------


def pod_manifest(
    namespace: str, name: str, labels: dict[str, str], port: int, node: str, sa: str
) -> dict[str, Any]:
    """A Pod bound to `node` (so no scheduler is needed) with container port `http`."""
    container = {"name": "app", "image": "app", "ports": [{"name": "http", "containerPort": port}]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [container]},
    }


def set_pod_ready(
    api: httpx.Client, namespace: str, name: str, ready: bool, ip: str = "127.0.0.1"
) -> None:
    """What the kubelet would report: Running at `ip`, Ready or not (status subresource)."""
    status = {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    response = api.patch(
        f"/api/v1/namespaces/{namespace}/pods/{name}/status",
        json={"status": status},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.is_success, response.text


# -- Pod addresses ----------------------------------------------------------------------


class PodNetwork:
    """Addresses for Pods: the API server refuses loopback endpoints, so Pods get
    addresses in a network namespace this test run makes (a veth pair to it from
    the host), and their backends run in it (`argv_prefix`). Nothing leaves the
    machine: the subnet exists only on this pair."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.name = f"pmk{pid}"  # interface names: 15 characters at most
        self.subnet = f"10.244.{pid % 250}"
        self._next = 10

    def _ip(self, *args: str, netns: bool = False) -> None:
        argv = ["ip", *(["-n", self.name] if netns else []), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip()} (needs root)")

    def create(self) -> None:
        host, inside = f"{self.name}h", f"{self.name}n"
        self._ip("netns", "add", self.name)
        self._ip("link", "add", host, "type", "veth", "peer", "name", inside)
        self._ip("link", "set", inside, "netns", self.name)
        self._ip("addr", "add", f"{self.subnet}.1/24", "dev", host)
        self._ip("link", "set", host, "up")
        self._ip("link", "set", "lo", "up", netns=True)
        self._ip("link", "set", inside, "up", netns=True)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", f"{self.name}h"], capture_output=True, timeout=30)

    def new_address(self) -> str:
        """One more Pod address, on the namespace's end of the pair."""
        address = f"{self.subnet}.{self._next}"
        self._next += 1
        self._ip("addr", "add", f"{address}/24", "dev", f"{self.name}n", netns=True)
        return address

    @property
    def argv_prefix(self) -> list[str]:
        """Run a command inside the namespace (where the Pod addresses are)."""
        return ["ip", "netns", "exec", self.name]


@contextlib.contextmanager
def pod_network() -> Iterator[PodNetwork]:
    network = PodNetwork()
    try:
        network.create()
        yield network
    finally:
        network.delete()
