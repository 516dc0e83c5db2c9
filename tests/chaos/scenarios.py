"""The chaos scenarios: each starts a mesh, puts load on it, applies one
fault, and appends a Result. `hold` scales how long each phase lasts."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from draining import draining_rolling_restart
from faults import RawBackend
from harness import HOST, PORT, URL, Cluster, Result, ScenarioCheckFailed, measured
from meshlab import LocalMesh, service_entry, subsets_rule
from relay import Relay, bootstrap_for
from replicas import control_plane_replica_swap, wait_until
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
    DestinationRule and VirtualService written in either order, the second only
    once the control plane has taken the first. Traffic must really move to v2
    (a control plane that ignored the VirtualService would fail nothing)."""
    v1 = lab.start_http_backend("chaos", "v1")
    v2 = lab.start_http_backend("chaos", "v2")
    endpoints = [("127.0.0.1", v1.ready["port"], {"version": "v1"})]
    endpoints.append(("127.0.0.1", v2.ready["port"], {"version": "v2"}))
    lab.write_config("chaos.yaml", service_entry(HOST, PORT, endpoints))
    lab.start_control_plane()
    order = "DR then VS" if rule_first else "VS then DR"
    dr, back_dr = subsets_rule(HOST, ["v1", "v2"]), subsets_rule(HOST, ["v1"])
    vs = virtual_service({"route": [{"destination": {"host": HOST, "subset": "v2"}}]})
    back_vs = virtual_service({"route": [{"destination": {"host": HOST}}]})

    # Each write, and what the running control plane shows once it has taken it:
    # a VirtualService naming a subset no DestinationRule defines (yet, or any
    # more) is taken with a config warning, as Istio takes it, and requests to
    # that subset fail with 503 NC until the other file follows (so that order
    # has failures by design: Istio's advice is the rule first).
    def both(v: View) -> bool:
        return v.subsets == ["v1", "v2"] and v.routed == ["v2"] and not v.errors

    def plain_v1(v: View) -> bool:
        return v.subsets == ["v1"] and v.routed == [""] and not v.errors

    def warned(v: View) -> bool:
        subset_warning = any("vs.yaml" in w and "subset" in w for w in v.warnings)
        return subset_warning and v.routed == ["v2"] and not v.errors

    Steps = list[tuple[str, str, Callable[[View], bool]]]
    forward: Steps
    back: Steps
    if rule_first:
        forward = [("dr.yaml", dr, lambda v: v.subsets == ["v1", "v2"]), ("vs.yaml", vs, both)]
        back = [("vs.yaml", back_vs, lambda v: v.routed == [""]), ("dr.yaml", back_dr, plain_v1)]
    else:
        forward = [("vs.yaml", vs, warned), ("dr.yaml", dr, both)]
        back = [("dr.yaml", back_dr, warned), ("vs.yaml", back_vs, plain_v1)]
    with (
        _mesh(lab) as mesh,
        httpx.Client(transport=mesh.httpx_transport(), timeout=10) as probe,
        measured(
            f"add subset + route ({order})",
            mesh,
            rate,
            hold,
            results,
            unavoidable=not rule_first,  # the 503 NC window, as in Istio
        ),
    ):
        for _ in range(2):
            for steps in (forward, back):
                for name, text, taken in steps:
                    lab.write_config(name, text)
                    wait_until(lambda t=taken: t(_view(lab)), 15, f"the control plane on {name}")
                if steps is forward:
                    _wait_served_only_by(probe, "v2")
                else:  # no subset any more: v1 serves again
                    wait_until(lambda: _served_by(probe) == "v1", 15, "traffic on v1 again")
                time.sleep(hold / 2)


@dataclass(frozen=True)
class View:
    """What the running control plane has taken: the DestinationRule's
    subsets, the VirtualService's routed subsets, its config errors and warnings."""

    subsets: list[str]
    routed: list[str]
    errors: list[str]
    warnings: list[str]


def _view(lab: LocalMesh) -> View:
    admin = f"http://{lab.admin_address}"
    doc = httpx.get(f"{admin}/describe?host={HOST}", timeout=5).raise_for_status().json()
    status = httpx.get(f"{admin}/status", timeout=5).raise_for_status().json()
    rule, service = doc.get("destination_rule") or {}, doc.get("virtual_service") or {}
    return View(
        [s["name"] for s in rule.get("subsets", [])],
        [d["subset"] for r in service.get("routes", []) for d in r["destinations"]],
        [str(e) for e in status["config_errors"]],
        [str(w) for w in status["config_warnings"]],
    )


def _served_by(probe: httpx.Client) -> str:
    return str(probe.get(URL).headers.get("x-version", "?"))


def _wait_served_only_by(probe: httpx.Client, version: str, window: int = 20) -> None:
    """Until `window` requests in a row are answered by `version`."""
    wait_until(lambda: _served_by(probe) == version, 15, f"traffic moving to {version}")
    seen = Counter(_served_by(probe) for _ in range(window))
    if seen != {version: window}:
        raise ScenarioCheckFailed(f"traffic not all on {version}: {dict(seen)}")


def subset_switch_rule_first(lab: LocalMesh, rate: float, hold: float, r: list[Result]) -> None:
    _subset_switch(lab, rate, hold, r, rule_first=True)


def subset_switch_route_first(lab: LocalMesh, rate: float, hold: float, r: list[Result]) -> None:
    _subset_switch(lab, rate, hold, r, rule_first=False)


def control_plane_restart(lab: LocalMesh, rate: float, hold: float, results: list[Result]) -> None:
    """The only control plane killed and started again (on a new port, behind
    the stable address of a Relay): the client must notice the loss, reconnect
    to the new process, and then take a change only the new one can send."""
    svc = Cluster(lab)
    cp = lab.start_control_plane()
    relay = Relay(str(cp.ready["xds"]))
    bootstrap = bootstrap_for(lab, "chaos-client", [relay.address])
    try:
        with (
            Mesh(bootstrap, preload=[f"{HOST}:{PORT}"]) as mesh,
            measured("control plane killed + restarted", mesh, rate, hold, results),
        ):
            wait_until(lambda: mesh.xds.connected, 15, "the first connection")
            cp.kill()
            lab.procs.remove(cp)
            wait_until(lambda: not mesh.xds.connected, 15, "the client noticing the loss")
            time.sleep(hold)
            relay.point_at(str(lab.start_control_plane().ready["xds"]))
            wait_until(lambda: mesh.xds.connected, 15, "reconnecting to the new control plane")
            svc.backends.append(lab.start_http_backend("chaos", "v1"))
            svc.publish()
            svc.wait_for(mesh, {b.ready["port"] for b in svc.backends})
            time.sleep(hold / 2)
    finally:
        relay.close()


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
