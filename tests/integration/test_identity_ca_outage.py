"""A CA outage longer than the certificate, end to end (~20 s): a real
`meshctl control-plane` issuing 8 s leaves, a Mesh that got one, then the
control plane (and its CA) stopped. The mesh must say so before it is too
late (at_risk: log, health, gauge), fail closed at expiry with a typed error,
and recover by itself when a control plane with the same CA comes back."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from meshlab import LocalMesh
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from relay import Relay

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.errors import WorkloadCertificateExpiredError
from proxyless_mesh.integrations._tls_transport import MtlsTransport, mesh_credentials
from proxyless_mesh.security import IdentityState
from proxyless_mesh.telemetry import TelemetryConfig
from proxyless_mesh.telemetry._metrics import CERT_EXPIRY_GAUGE, CERT_RENEWAL_FAILURES

LEAF_TTL = 8.0
FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend"


class Transitions(logging.Handler):
    """Events for the identity's state-change log lines: what an operator
    sees is what the test waits on (no polling)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.at_risk = threading.Event()
        self.expired = threading.Event()
        self.recovered = threading.Event()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.lines.append(message)
        if " at risk" in message:
            self.at_risk.set()
        elif "EXPIRED" in message:
            self.expired.set()
        elif "renewed after" in message:
            self.recovered.set()


@pytest.fixture
def transitions() -> Iterator[Transitions]:
    handler = Transitions()
    logger = logging.getLogger("proxyless_mesh.security")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _gauge(reader: InMemoryMetricReader, name: str) -> float:
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    (point,) = metric.data.data_points
                    assert isinstance(point, NumberDataPoint)
                    return float(point.value)
    raise AssertionError(f"no {name} reported")


@pytest.mark.timeout(90)
def test_ca_outage_goes_at_risk_then_expired_then_recovers(
    lab: LocalMesh, transitions: Transitions
) -> None:
    cp = lab.start_control_plane(extra_args=["--leaf-ttl", f"{LEAF_TTL:g}s"])
    # The control plane comes back on ports of its own, behind the stable
    # addresses the bootstrap names (relay.py): its xDS and its CA.
    xds, ca = Relay(lab.xds_address), Relay(lab.ca_address)
    ca_address = ca.address
    path = lab.bootstrap("fe-1", "shop", "frontend", token=lab.token("shop", "frontend"))
    doc = json.loads(path.read_text())
    doc["xds_servers"][0]["server_uri"] = xds.address
    doc["proxyless_mesh"]["ca_address"] = ca_address
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    mesh = Mesh(
        Bootstrap.from_json(json.dumps(doc)),
        telemetry=TelemetryConfig(meter_provider=provider, tracing=False),
    )
    try:
        with mesh:
            health = mesh.health()
            assert health.identity == "ok" and health.xds_connected
            assert health.expires_in is not None and 0 < health.expires_in <= LEAF_TTL
            assert mesh.client_ssl_context() is not None

            cp.stop()  # the CA goes with it
            assert transitions.at_risk.wait(LEAF_TTL + 5)
            health = mesh.health()
            assert health.identity is IdentityState.AT_RISK and health.serving
            assert health.expires_in is not None and 0 < health.expires_in < LEAF_TTL / 4
            assert health.last_renewal_error and ca_address in health.last_renewal_error
            assert health.renewal_failures >= 1
            assert 0 < _gauge(reader, CERT_EXPIRY_GAUGE) < LEAF_TTL / 4
            mesh.client_ssl_context()  # at risk, not yet expired: still usable

            assert transitions.expired.wait(LEAF_TTL + 5)
            health = mesh.health()
            assert health.identity is IdentityState.EXPIRED and not health.serving
            assert not health.xds_connected
            assert _gauge(reader, CERT_EXPIRY_GAUGE) <= 0
            with pytest.raises(WorkloadCertificateExpiredError) as caught:
                mesh.client_ssl_context()
            assert caught.value.spiffe_id == FRONTEND
            # The mTLS transport fails closed the same way, before any handshake.
            source = mesh_credentials(mesh)
            assert source is not None
            with socket.create_server(("127.0.0.1", 0)) as listener, MtlsTransport(source) as tls:
                url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
                with pytest.raises(WorkloadCertificateExpiredError):
                    tls.handle_request(httpx.Request("GET", url))
            assert caught.value.last_renewal_error == health.last_renewal_error
            failures = _gauge(reader, CERT_RENEWAL_FAILURES)
            assert failures == health.renewal_failures

            # A control plane with the same CA state, where the bootstrap expects it.
            back = lab.start_control_plane(extra_args=["--leaf-ttl", f"{LEAF_TTL:g}s"])
            xds.point_at(str(back.ready["xds"]))
            ca.point_at(str(back.ready["ca"]))
            assert transitions.recovered.wait(15)
            health = mesh.health()
            assert health.identity == "ok" and health.last_renewal_error is None
            assert health.expires_in is not None and health.expires_in > LEAF_TTL / 2
            assert mesh.client_ssl_context() is not None
            # One line per change (plus the first failure), not one per retry.
            assert failures >= 4
            assert len(transitions.lines) <= 6
    finally:
        xds.close()
        ca.close()
        provider.shutdown()
