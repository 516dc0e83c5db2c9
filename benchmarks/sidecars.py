"""An Istio-style Envoy sidecar pair on loopback, for the comparison rows.

    client -> [client sidecar: outbound listener] --mTLS--> [server sidecar:
    inbound listener] -> app

Both sidecars run like Istio's: an HTTP connection manager with the router
filter, stats on (Envoy's default), access logs off (Istio's default), two
worker threads (Istio's default proxy concurrency), HTTP/1.1 between the
proxies (Istio upgrades to HTTP/2 between sidecars only when asked). Static
clusters are enough: this row compares data paths, not xDS. With `tls=True`
the sidecars speak mutual TLS with throwaway SPIFFE certificates, the server
sidecar checking the client's URI SAN and vice versa, as Istio's do.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from meshlab import LocalMesh, Proc, ProcessFailed

ENVOY = Path(sys.executable).parent / "envoy"
TRUST_DOMAIN = "cluster.local"
_TLS = "envoy.transport_sockets.tls"
_TLS_V3 = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
_HCM_V3 = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
_ROUTER_V3 = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_base_ids = itertools.count(os.getpid() % 1000 * 16)


@dataclass(frozen=True)
class PeerFiles:
    """PEM files of one workload: its chain, its key and the CA to trust."""

    cert: Path
    key: Path
    ca: Path
    spiffe_id: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(directory: Path, service_accounts: list[str]) -> dict[str, PeerFiles]:
    """A throwaway CA and one leaf per service account, SPIFFE URI SAN only
    (as Istio issues them): spiffe://cluster.local/ns/default/sa/<sa>."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("bench-ca"))
        .issuer_name(_name("bench-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    peers = {}
    for sa in service_accounts:
        spiffe_id = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{sa}"
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=12))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                critical=True,  # an empty subject makes the SAN critical (RFC 5280)
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = directory / f"{sa}.pem", directory / f"{sa}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        peers[sa] = PeerFiles(cert_path, key_path, ca_path, spiffe_id)
    return peers


def _common_tls(me: PeerFiles, peer_prefix: str) -> dict[str, Any]:
    return {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(me.cert)},
                "private_key": {"filename": str(me.key)},
            }
        ],
        "validation_context": {
            "trusted_ca": {"filename": str(me.ca)},
            "match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"prefix": peer_prefix}}
            ],
        },
    }


def _static_cluster(name: str, port: int, tls: dict[str, Any] | None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if tls is not None:
        cluster["transport_socket"] = {
            "name": _TLS,
            "typed_config": {"@type": _TLS_V3 + "UpstreamTlsContext", **tls},
        }
    return cluster


def sidecar_config(
    role: str, upstream_port: int, tls_upstream: dict[str, Any] | None, tls_down: Any
) -> dict[str, Any]:
    """Envoy bootstrap: one listener on 127.0.0.1:0 routing everything to one
    static cluster; admin on a free port."""
    chain: dict[str, Any] = {
        "filters": [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": _HCM_V3,
                    "stat_prefix": role,
                    "route_config": {
                        "name": role,
                        "virtual_hosts": [
                            {
                                "name": role,
                                "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
                            }
                        ],
                    },
                    "http_filters": [
                        {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_V3}}
                    ],
                },
            }
        ]
    }
    if tls_down is not None:
        chain["transport_socket"] = {
            "name": _TLS,
            "typed_config": {"@type": _TLS_V3 + "DownstreamTlsContext", **tls_down},
        }
    return {
        "node": {"id": f"bench-{role}", "cluster": "bench"},
        "static_resources": {
            "listeners": [
                {
                    "name": role,
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [chain],
                }
            ],
            "clusters": [_static_cluster("up", upstream_port, tls_upstream)],
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }


def _admin_get(admin: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=5) as response:
        return json.loads(response.read())


def start_envoy(lab: LocalMesh, name: str, config: dict[str, Any], timeout: float = 30) -> Proc:
    """Start Envoy on `config`; ready once its listener has a port. The Proc's
    `ready` holds {"port", "admin", "pid"}; `lab.close()` stops it."""
    path = lab.workdir / f"{name}.json"
    path.write_text(json.dumps(config))
    admin_file = lab.workdir / f"{name}.admin"
    admin_file.unlink(missing_ok=True)
    log = lab.workdir / f"{name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            [
                str(ENVOY),
                "-c",
                str(path),
                "--admin-address-path",
                str(admin_file),
                "--disable-hot-restart",
                "--base-id",
                str(next(_base_ids)),
                "--concurrency",
                "2",
                "-l",
                "warning",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    proc = Proc(name, popen, {"pid": popen.pid}, log)
    lab.procs.append(proc)
    deadline = time.monotonic() + timeout
    while True:
        if popen.poll() is not None:
            raise ProcessFailed(f"{name} exited with {popen.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise ProcessFailed(f"{name} not ready after {timeout}s:\n{log.read_text()}")
        admin = admin_file.read_text().strip() if admin_file.exists() else ""
        if admin:
            statuses = _admin_get(admin, "/listeners?format=json").get("listener_statuses", [])
            ports = [s["local_address"]["socket_address"].get("port_value", 0) for s in statuses]
            if ports and ports[0]:
                proc.ready.update(port=int(ports[0]), admin=admin)
                return proc
        time.sleep(0.02)


def start_sidecar_pair(lab: LocalMesh, app_port: int, *, tls: bool) -> tuple[Proc, Proc]:
    """Server sidecar in front of the app, client sidecar in front of it;
    returns (client_sidecar, server_sidecar). Send requests to the client
    sidecar's `ready["port"]`."""
    suffix = "mtls" if tls else "plain"
    tls_up: dict[str, Any] | None = None
    tls_down: dict[str, Any] | None = None
    if tls:
        peers = make_certificates(lab.workdir / "certs", ["client", "server"])
        prefix = f"spiffe://{TRUST_DOMAIN}/"
        tls_down = {
            "require_client_certificate": True,
            "common_tls_context": _common_tls(peers["server"], prefix),
        }
        tls_up = {"common_tls_context": _common_tls(peers["client"], peers["server"].spiffe_id)}
    server = start_envoy(
        lab, f"envoy-server-{suffix}", sidecar_config("inbound", app_port, None, tls_down)
    )
    client = start_envoy(
        lab,
        f"envoy-client-{suffix}",
        sidecar_config("outbound", server.ready["port"], tls_up, None),
    )
    return client, server
