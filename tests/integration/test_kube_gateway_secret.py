"""credentialName from a Kubernetes Secret (tests/kube.py's real API server): a
gateway agent given a kubeconfig of its own ServiceAccount (allowed to list
Secrets in its namespace only) serves the `kubernetes.io/tls` Secret named by
its Gateway's credentialName over HTTPS, and a replaced Secret is served
without a restart."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from gateway_support import PrivateCa, running_gateway, wait_for_listener
from kube import KubeCluster
from meshlab import LocalMesh

NS = "gwsecret"
HOST = "shop.example.com"
CREDENTIAL = "shop-cert"
ROTATION_LIMIT = 15.0  # seconds for a replaced Secret to be served


def _doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "namespace": NS}
    return {"apiVersion": "networking.istio.io/v1", "kind": kind, "metadata": meta, "spec": spec}


def _secret(cert: bytes, key: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": CREDENTIAL, "namespace": NS},
        "data": {
            "tls.crt": base64.b64encode(cert).decode(),
            "tls.key": base64.b64encode(key).decode(),
        },
    }


def _served_serial(ca: PrivateCa, port: int) -> int:
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_the_gateway_serves_and_rotates_a_kubernetes_tls_secret(
    kube: KubeCluster, lab: LocalMesh, tmp_path: Path
) -> None:
    ca = PrivateCa.create("ingress CA")
    cert, key, first = ca.server_pair(HOST)
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "gateway-secrets", "namespace": NS},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "gateway-secrets", "namespace": NS},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        },
        "subjects": [{"kind": "ServiceAccount", "name": "ingress", "namespace": NS}],
    }
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "ingress", "namespace": NS},
    }
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    kube.apply(account, role, binding, _secret(cert, key))
    kubeconfig = kube.service_account_kubeconfig(NS, "ingress", tmp_path / "ingress.kubeconfig")
    backend = lab.start_http_backend("shop", "v1")
    server = {"number": 443, "name": "https", "protocol": "HTTPS"}
    docs = [
        _doc(
            "ServiceEntry",
            "shop",
            {
                "hosts": ["shop.internal.test"],
                "location": "MESH_EXTERNAL",
                "resolution": "STATIC",
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                "endpoints": [{"address": "127.0.0.1", "ports": {"http": backend.ready["port"]}}],
            },
        ),
        _doc(
            "Gateway",
            "ingress",
            {
                "selector": {"istio": "ingress"},
                "servers": [
                    {
                        "port": server,
                        "hosts": [HOST],
                        "tls": {"mode": "SIMPLE", "credentialName": CREDENTIAL},
                    }
                ],
            },
        ),
        _doc(
            "VirtualService",
            "shop",
            {
                "hosts": [HOST],
                "gateways": ["ingress"],
                "http": [{"route": [{"destination": {"host": "shop.internal.test"}}]}],
            },
        ),
    ]
    lab.write_config("ingress.yaml", "\n---\n".join(json.dumps(d) for d in docs))
    lab.start_control_plane()
    with running_gateway(lab, "ingress", NS, kubeconfig=kubeconfig) as admin:
        # The listener is active only once Envoy has the certificate by SDS.
        port = wait_for_listener(admin, "0.0.0.0_443")
        trusting = ssl.create_default_context(cadata=ca.cert_pem.decode())
        with httpx.Client(verify=trusting, timeout=10) as client:
            response = client.get(
                f"https://127.0.0.1:{port}/",
                headers={"host": HOST},
                extensions={"sni_hostname": HOST},
            )
        assert response.status_code == 200 and response.json()["version"] == "v1"
        assert _served_serial(ca, port) == first
        cert, key, second = ca.server_pair(HOST)
        kube.apply(_secret(cert, key))
        deadline = time.monotonic() + ROTATION_LIMIT
        while _served_serial(ca, port) != second:
            assert time.monotonic() < deadline, "the replaced Secret was not served"
            time.sleep(0.2)
