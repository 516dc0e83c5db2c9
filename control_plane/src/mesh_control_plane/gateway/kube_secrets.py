"""credentialName from Kubernetes: the gateway agent reads the
`kubernetes.io/tls` Secrets of its namespace through the API server, with its
own credentials (its ServiceAccount token in-cluster, or a kubeconfig), as
Istio's gateways do, and serves each as ``kubernetes://<name>`` (``tls.crt``,
``tls.key``; ``ca.crt`` as ``<name>-cacert`` for MUTUAL). The list is read
again every second; a changed Secret reaches Envoy by SDS without a restart,
and a removed one is no longer served (Envoy keeps what it has).

RBAC: `list` on secrets in the gateway's namespace (Istio's gateway Role gives
get/list/watch on secrets there).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Mapping
from typing import Any

import httpx
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from mesh_control_plane.gateway.sds import SecretStore, roots_secret, tls_secret
from mesh_control_plane.kube.client import KubeConnection
from mesh_control_plane.translate.sds import CACERT_SUFFIX, credential_secret

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
TLS_TYPE = "kubernetes.io/tls"


def secrets_of(items: list[Mapping[str, Any]]) -> dict[str, secret_pb2.Secret]:
    """SDS secrets of a Secret list's items (type kubernetes.io/tls)."""
    found: dict[str, secret_pb2.Secret] = {}
    for item in items:
        if item.get("type") != TLS_TYPE:
            continue
        data = item.get("data") or {}
        name = credential_secret(str(item.get("metadata", {}).get("name", "")))
        try:
            crt, key = base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"])
            found[name] = tls_secret(name, crt, key)
            if "ca.crt" in data:
                ca = base64.b64decode(data["ca.crt"])
                found[name + CACERT_SUFFIX] = roots_secret(name + CACERT_SUFFIX, ca)
        except (KeyError, binascii.Error) as exc:
            log.warning("Secret %s: not a usable TLS Secret (%r)", name, exc)
    return found


async def watch_kube_secrets(
    connection: KubeConnection, namespace: str, store: SecretStore
) -> None:
    """Poll the namespace's TLS Secrets into `store` until cancelled."""
    path = f"/api/v1/namespaces/{namespace}/secrets"
    params = {"fieldSelector": f"type={TLS_TYPE}"}
    served: set[str] = set()
    async with connection.async_client(timeout=10.0) as client:
        while True:
            try:
                response = await client.get(path, params=params)
                response.raise_for_status()
                current = secrets_of(response.json().get("items") or [])
                store.update(current)
                store.remove(served - set(current))
                served = set(current)
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("Kubernetes Secrets of %s: not read (%r); retrying", namespace, exc)
            await asyncio.sleep(POLL_SECONDS)
