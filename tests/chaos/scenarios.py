"""The chaos scenarios: each starts a mesh, puts load on it, applies one
fault, and appends a Result. `hold` scales how long each phase lasts."""

from __future__ import annotations

import json
import time

from draining import draining_rolling_restart
from faults import RawBackend
from harness import HOST, PORT, Cluster, Result, measured
from meshlab import LocalMesh, service_entry, subsets_rule
from replicas import control_plane_replica_swap
from rotation import certificate_rotation

from proxyless_mesh import Mesh

RETRIES = {
    "timeout": "3s",
    "retries": {"attempts": 3, "perTryTimeout": "0.3s", "retryOn": "5xx,reset,connect-failure"},
}


# What a user sets against a bad instance: eject it after a few consecutive errors
# (resets and timeouts count as 5xx when local-origin errors are not split), and
# `maxRetries`, which replaces the default retry budget (20 % of active requests, at
# least 3 at once). With the budget, a burst of retries is refused by design: when
# ~10 requests hung on one host time out together, their retries exceed 3 at once
# (2 of 283 requests in one short run, 4 of 1,746 resets in a long one). Istio's own
# default maxRetries is effectively unlimited.
OUTLIER_RULE = json.dumps(
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "chaos", "namespace": "default"},
        "spec": {
            "host": HOST,
            "trafficPolicy": {
                "outlierDetection": {
                    "consecutive5xxErrors": 3,
                    "interval": "1s",
                    "baseEjectionTime": "30s",
                },
                "connectionPool": {"http": {"maxRetries": 100}},
            },
        },
    }
)


def virtual_service(http: dict[str, object]) -> str:
    return json.dumps(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "chaos", "namespace": "default"},
            "spec": {"hosts": [HOST], "http": [http]},
        }
    )


def _mesh(lab: LocalMesh) -> Mesh:
    return Mesh.from_bootstrap(lab.bootstrap("chaos-client"), preload=[f"{HOST}:{PORT}"])


def rolling_restart(lab: LocalMesh, rate: float, hold: float, results: list[Result]) -> None:
    """Each backend in turn: drop it from the ServiceEntry, wait until the
    client stops using it, stop it, start a replacement, add it."""
    svc = Cluster(lab)
    lab.start_control_plane()
    with _mesh(lab) as mesh, measured("rolling restart (graceful)", mesh, rate, hold, results):
        for old in list(svc.backends):
            svc.backends.remove(old)
            svc.publish()
            svc.wait_for(mesh, {b.ready["port"] for b in svc.backends})
            time.sleep(0.1)  # requests already sent to it finish
            old.stop()
            svc.backends.append(lab.start_http_backend("chaos", "v1"))
            svc.publish()
            svc.wait_for(mesh, {b.ready["port"] for b in svc.backends})
            time.sleep(hold / 3)


def scale_up_and_down(lab: LocalMesh, rate: float, hold: float, results: list[Result]) -> None:
    svc = Cluster(lab, replicas=1)
    lab.start_control_plane()
    with _mesh(lab) as mesh, measured("scale 1 -> 4 -> 1", mesh, rate, hold, results):
        for _ in range(3):
            svc.backends.append(lab.start_http_backend("chaos", "v1"))
            svc.publish()
            svc.wait_for(mesh, {b.ready["port"] for b in svc.backends})
        time.sleep(hold / 2)
        while len(svc.backends) > 1:
            gone = svc.backends.pop()
            svc.publish()
            svc.wait_for(mesh, {b.ready["port"] for b in svc.backends})
            time.sleep(0.1)
            gone.stop()


def _subset_switch(
    lab: LocalMesh, rate: float, hold: float, results: list[Result], *, rule_first: bool
) -> None:
    """Add subset v2 and route all traffic to it, then back to no subsets: the
    DestinationRule and VirtualService written in either order."""
    v1 = lab.start_http_backend("chaos", "v1")
    v2 = lab.start_http_backend("chaos", "v2")
    endpoints = [("127.0.0.1", v1.ready["port"], {"version": "v1"})]
    endpoints.append(("127.0.0.1", v2.ready["port"], {"version": "v2"}))
    lab.write_config("chaos.yaml", service_entry(HOST, PORT, endpoints))
    lab.start_control_plane()
    to_v2 = virtual_service({"route": [{"destination": {"host": HOST, "subset": "v2"}}]})
    plain = virtual_service({"route": [{"destination": {"host": HOST}}]})
    rule = subsets_rule(HOST, ["v1", "v2"])
    order = "DR then VS" if rule_first else "VS then DR"
    with _mesh(lab) as mesh, measured(f"add subset + route ({order})", mesh, rate, hold, results):
        for _ in range(2):
            steps = [("dr.yaml", rule), ("vs.yaml", to_v2)]
            for name, text in steps if rule_first else reversed(steps):
                lab.write_config(name, text)
                time.sleep(0.05)
            time.sleep(hold / 2)
            # ...and the reverse: route away from the subset, then drop it.
            back = [("vs.yaml", plain), ("dr.yaml", subsets_rule(HOST, ["v1"]))]
            for name, text in back if rule_first else reversed(back):
                lab.write_config(name, text)
                time.sleep(0.05)
            time.sleep(hold / 2)


def subset_switch_rule_first(lab: LocalMesh, rate: float, hold: float, r: list[Result]) -> None:
    _subset_switch(lab, rate, hold, r, rule_first=True)


def subset_switch_route_first(lab: LocalMesh, rate: float, hold: float, r: list[Result]) -> None:
    _subset_switch(lab, rate, hold, r, rule_first=False)


def control_plane_restart(lab: LocalMesh, rate: float, hold: float, results: list[Result]) -> None:
    Cluster(lab)
    cp = lab.start_control_plane()
    port = int(lab.xds_address.rsplit(":", 1)[1])
    with (
        _mesh(lab) as mesh,
        measured("control plane killed + restarted", mesh, rate, hold, results),
    ):
        cp.kill()
        lab.procs.remove(cp)
        time.sleep(hold)
        lab.start_control_plane(xds_port=port)
        deadline = time.monotonic() + 15
        while not mesh.xds.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(hold / 2)


def _bad_backend(
    lab: LocalMesh, rate: float, hold: float, results: list[Result], mode: str
) -> None:
    bad = RawBackend(mode)
    try:
        svc = Cluster(lab, replicas=2)
        lab.write_config(
            "vs.yaml", virtual_service({"route": [{"destination": {"host": HOST}}], **RETRIES})
        )
        lab.write_config("dr.yaml", OUTLIER_RULE)
        lab.start_control_plane()
        good = {b.ready["port"] for b in svc.backends}
        with (
            _mesh(lab) as mesh,
            measured(f"backend that {mode}s (+retries, ejection)", mesh, rate, hold, results),
        ):
            lab.write_config(
                "chaos.yaml",
                service_entry(HOST, PORT, [("127.0.0.1", p, {}) for p in [*good, bad.port]]),
            )
            svc.wait_for(mesh, {*good, bad.port})
            time.sleep(hold)
            svc.publish()
            svc.wait_for(mesh, good)
        # Retries refused by the retry budget (flag UO) explain failures that a retry
        # would otherwise have saved; private read, the mesh has no public counter.
        overflows = sum(r.retry_overflows for r in mesh._resources.values())
        if overflows:
            results[-1].errors["retries refused by the budget"] = overflows
    finally:
        bad.close()


def hanging_backend(lab: LocalMesh, rate: float, hold: float, r: list[Result]) -> None:
    _bad_backend(lab, rate, hold, r, "hang")


def resetting_backend(lab: LocalMesh, rate: float, hold: float, r: list[Result]) -> None:
    _bad_backend(lab, rate, hold, r, "reset")


SCENARIOS = {
    "rolling_restart": rolling_restart,
    "rolling_restart_draining": draining_rolling_restart,
    "scale": scale_up_and_down,
    "subset_rule_first": subset_switch_rule_first,
    "subset_route_first": subset_switch_route_first,
    "control_plane_restart": control_plane_restart,
    "control_plane_replica_swap": control_plane_replica_swap,
    "certificate_rotation": certificate_rotation,
    "hanging_backend": hanging_backend,
    "resetting_backend": resetting_backend,
}
