"""Differential: the inbound decision table (inbound_table.py, which the
library's stacks pass in test_inbound_decision_table.py) through Envoy
sidecars run by `meshctl proxy run`, their RBAC and jwt_authn translated by
the control plane from the same YAML. Every row must get the status the
library gives it, and a served row must hand the application what the
library's stacks hand theirs."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator

import pytest
import uvicorn
from gateway_support import running_proxy, wait_for_listener
from identities import listening_socket
from inbound_stacks import XDS_GROUPS, HttpStack, Outcome, echo_asgi, policy_documents
from inbound_table import ROWS, Row
from meshlab import LocalMesh
from processes import reserved_port

pytestmark = pytest.mark.interop

NAMESPACE = "foo"


def _config(ports: dict[str, int]) -> str:
    docs = [
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": NAMESPACE},
            "spec": {"mtls": {"mode": "DISABLE"}},  # the rows are raw plaintext requests
        }
    ]
    for group, port in ports.items():
        for doc in policy_documents(group):
            doc["spec"]["selector"] = {"matchLabels": {"app": group}}
            doc["metadata"]["name"] = f"{group}-{doc['metadata']['name']}"
            docs.append(doc)
        docs.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "ServiceEntry",
                "metadata": {"name": f"table-{group}", "namespace": NAMESPACE},
                "spec": {
                    "hosts": [f"table-{group}.{NAMESPACE}.svc.cluster.local"],
                    "location": "MESH_INTERNAL",
                    "resolution": "STATIC",
                    "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                    "endpoints": [
                        {
                            "address": "127.0.0.1",
                            "ports": {"http": port},
                            "serviceAccount": f"table-{group}",
                        }
                    ],
                },
            }
        )
    return "\n---\n".join(json.dumps(d) for d in docs)


@contextlib.contextmanager
def _echo_app() -> Iterator[int]:
    """The stacks' echo app under plain uvicorn: what the sidecar forwards."""
    sock = listening_socket()
    config = uvicorn.Config(echo_asgi, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def sidecar_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    lab = LocalMesh(tmp_path_factory.mktemp("sidecar-table"))
    with contextlib.ExitStack() as stack:
        stack.callback(lab.close)
        ports = {group: stack.enter_context(reserved_port()) for group in XDS_GROUPS}
        app_port = stack.enter_context(_echo_app())
        lab.write_config("table.yaml", _config(ports))
        lab.start_control_plane()
        for group, port in ports.items():
            admin = stack.enter_context(
                running_proxy(lab, f"table-{group}", NAMESPACE, {port: app_port}, (f"app={group}",))
            )
            wait_for_listener(admin, f"inbound|{port}")
        sidecars = HttpStack(ports)
        return {row.id: sidecars.send(row) for row in ROWS if row.policy in XDS_GROUPS}


def test_the_table_is_large_enough_to_compare() -> None:
    assert len([row for row in ROWS if row.policy in XDS_GROUPS]) >= 40


KNOWN_DIFFERENCES = {
    # Both refuse, with another status.
    "fragment": "Envoy 400, the library 403",
    "fragment-dots": "Envoy 400, the library 403",
    "absolute-userinfo": "Envoy 403, the library 400",
    "asterisk-form": "Envoy 404, the library 400",
    "te-not-chunked": "Envoy 501, the library 400",
    # Malformed requests the library refuses and Envoy 1.40's codec forwards
    # (the policy still judges what is forwarded: none of these reaches a
    # denied path or host as the policy names it).
    "bad-escape": "Envoy forwards an invalid %-escape",
    "cut-escape": "Envoy forwards a cut %-escape",
    "cr-header-value": "Envoy forwards a lone CR in a header value",
    "host-duplicate": "Envoy forwards two Host headers",
    "host-userinfo": "Envoy forwards userinfo in Host",
    "host-comma": "Envoy forwards a comma in Host",
    "host-missing-http10": "Envoy refuses HTTP/1.0 without Host (400), the library serves it",
    # Envoy's RBAC matches hosts on the port-stripped Host (as the library),
    # and the stripped Host is what the application then gets.
    "allow-host-case-port": "allowed by both; Envoy hands the app the Host without its port",
}


def _wrong(row: Row, outcome: Outcome) -> str | None:
    status, seen = outcome
    if status != row.status:
        return f"{row.id}: {status}, the library gives {row.status} ({row.source})"
    if status == 200 and row.path is not None and seen.get("path") != row.path:
        return f"{row.id}: the app was handed path {seen.get('path')!r}, not {row.path!r}"
    if status == 200 and seen.get("host") != row.host:
        return f"{row.id}: the app was handed Host {seen.get('host')!r}"
    return None


def test_envoy_sidecars_decide_every_row_as_the_library(
    sidecar_outcomes: dict[str, Outcome],
) -> None:
    """Every row but the known differences (each named with its reason); a
    difference that goes away must leave the list too."""
    rows = {row.id: row for row in ROWS}
    wrong = {rid: w for rid, out in sidecar_outcomes.items() if (w := _wrong(rows[rid], out))}
    unexpected = [w for rid, w in wrong.items() if rid not in KNOWN_DIFFERENCES]
    assert not unexpected, f"{len(wrong)} of {len(sidecar_outcomes)} rows differ:\n" + "\n".join(
        unexpected
    )
    assert set(wrong) == set(KNOWN_DIFFERENCES), set(KNOWN_DIFFERENCES) - set(wrong)
    agreeing = len(sidecar_outcomes) - len(wrong)
    assert agreeing >= 40, f"only {agreeing} rows agree"
