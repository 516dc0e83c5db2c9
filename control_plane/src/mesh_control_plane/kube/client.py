"""How the control plane reaches a Kubernetes API server: a kubeconfig file or the
in-cluster ServiceAccount, turned into an httpx client.

httpx (already a dependency) rather than the official `kubernetes` package: the
control plane needs a handful of GETs, streaming watches and a few writes, all on
its asyncio loop; the official client is synchronous (its asyncio twin is a
separate package), imports ~40 MB of generated models and would add a dependency
tree (urllib3, google-auth, websocket-client) for little.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

__all__ = ["IN_CLUSTER", "KubeConfigError", "KubeConnection", "connection_from"]

IN_CLUSTER = "in-cluster"
_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(ValueError):
    """The kubeconfig (or in-cluster environment) cannot be used."""


@dataclass(frozen=True)
class KubeConnection:
    server: str  # https://host:port
    ssl_context: ssl.SSLContext | bool
    token_file: str = ""  # re-read on each new client: projected tokens rotate
    token: str = ""
    namespace: str = "default"

    def headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file:
            token = Path(self.token_file).read_text().strip()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def sync_client(self, *, timeout: float = 30.0) -> httpx.Client:
        """For the few calls made before the event loop serves (startup)."""
        return httpx.Client(
            base_url=self.server, verify=self.ssl_context, headers=self.headers(), timeout=timeout
        )

    def async_client(self, *, timeout: float | None = 30.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.server, verify=self.ssl_context, headers=self.headers(), timeout=timeout
        )


def connection_from(kubeconfig: str) -> KubeConnection:
    """A path to a kubeconfig (its current context), or `in-cluster`."""
    if kubeconfig == IN_CLUSTER:
        return _in_cluster()
    return _from_kubeconfig(Path(kubeconfig))


def _in_cluster() -> KubeConnection:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubeConfigError("in-cluster: KUBERNETES_SERVICE_HOST is not set (not in a Pod?)")
    if ":" in host:
        host = f"[{host}]"
    context = ssl.create_default_context(cafile=str(_SA_DIR / "ca.crt"))
    namespace = (_SA_DIR / "namespace").read_text().strip()
    return KubeConnection(
        f"https://{host}:{port}", context, token_file=str(_SA_DIR / "token"), namespace=namespace
    )


def _named(config: Mapping[str, Any], section: str, name: str) -> Mapping[str, Any]:
    for item in config.get(section) or ():
        if item.get("name") == name:
            inner = item.get(section[:-1]) or {}
            return inner if isinstance(inner, Mapping) else {}
    raise KubeConfigError(f"kubeconfig: no {section[:-1]} named {name!r}")


def _from_kubeconfig(path: Path) -> KubeConnection:
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise KubeConfigError(f"kubeconfig {path}: {exc}") from exc
    if not isinstance(config, Mapping):
        raise KubeConfigError(f"kubeconfig {path}: not a mapping")
    context = _named(config, "contexts", str(config.get("current-context", "")))
    cluster = _named(config, "clusters", str(context.get("cluster", "")))
    user = _named(config, "users", str(context.get("user", "")))
    server = str(cluster.get("server", ""))
    if not server.startswith("https://"):
        raise KubeConfigError(f"kubeconfig {path}: server {server!r} is not https")
    base = path.parent
    if cluster.get("insecure-skip-tls-verify"):
        raise KubeConfigError(f"kubeconfig {path}: insecure-skip-tls-verify is refused")
    try:
        ca = _material(base, cluster, "certificate-authority")
        # No CA named: the system's trust store (create_default_context's default).
        ssl_context = ssl.create_default_context(cadata=ca.decode() if ca else None)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise KubeConfigError(f"kubeconfig {path}: certificate-authority: {exc}") from exc
    try:
        cert = _material(base, user, "client-certificate")
        key = _material(base, user, "client-key")
        if cert and key:
            _load_chain(ssl_context, cert, key)
    except (OSError, ValueError) as exc:
        raise KubeConfigError(f"kubeconfig {path}: client certificate: {exc}") from exc
    token = str(user.get("token", ""))
    token_file = str(base / user["tokenFile"]) if user.get("tokenFile") else ""
    return KubeConnection(
        server,
        ssl_context,
        token=token,
        token_file=token_file,
        namespace=str(context.get("namespace") or "default"),
    )


def _material(base: Path, section: Mapping[str, Any], field: str) -> bytes | None:
    """`field-data` (base64) or `field` (a path, relative to the kubeconfig)."""
    data = section.get(f"{field}-data")
    if data:
        return base64.b64decode(data)
    if section.get(field):
        return (base / str(section[field])).read_bytes()
    return None


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl loads a client key only from a file: a private temporary one, removed
    as soon as it is read."""
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = Path(tmp) / "client.crt", Path(tmp) / "client.key"
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        context.load_cert_chain(str(cert_path), str(key_path))
