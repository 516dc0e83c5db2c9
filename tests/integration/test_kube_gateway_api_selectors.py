"""Gateway API allowedRoutes on a real Kubernetes API server (tests/kube.py):
the control plane watches Namespaces, so a listener's `from: Selector` picks
route namespaces by their labels and a relabelled Namespace re-evaluates
attachment (the route's Accepted condition and the listener's attachedRoutes,
written by the Lease holder); a listener kind it cannot serve is reported on the
listener (ResolvedRefs=False, InvalidRouteKinds, supportedKinds the valid ones)
while the rest of the Gateway is served."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kube import KubeCluster
from meshlab import LocalMesh

NS = "gwsel"  # the Gateway's
TEAM = "gwsel-team"  # the route's, picked by its label
GROUP = "gateway.networking.k8s.io"
STATUS_LIMIT = 20.0  # seconds for a status to be written


def _status(
    kube: KubeCluster, kind: str, name: str, namespace: str, ready: Callable[[Any], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + STATUS_LIMIT
    while True:
        out = kube.kubectl("get", f"{kind}.{GROUP}", name, "-n", namespace, "-o", "json")
        status = json.loads(out).get("status") or {}
        if ready(status):
            return dict(status)
        assert time.monotonic() < deadline, f"{kind} {name}: not as awaited: {status}"
        time.sleep(0.2)


def _conditions(items: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in items}


def _accepted(status: dict[str, Any]) -> tuple[str, str] | None:
    parents = status.get("parents") or []
    return _conditions(parents[0]["conditions"]).get("Accepted") if parents else None


def _listeners(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {listener["name"]: listener for listener in status.get("listeners") or []}


def _attached(status: dict[str, Any]) -> int:
    return int(_listeners(status)["teams"]["attachedRoutes"])


def test_namespace_labels_select_routes_and_invalid_kinds_stay_on_the_listener(
    kube: KubeCluster, tmp_path: Path
) -> None:
    meshctl = str(Path(sys.executable).parent / "meshctl")
    subprocess.run([meshctl, "install", "--kubeconfig", str(kube.kubeconfig)], check=True)
    namespaces = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": TEAM, "labels": {"team": "shop"}},
        },
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "shop", "namespace": TEAM},
        "spec": {"selector": {"app": "shop"}, "ports": [{"name": "http", "port": 9080}]},
    }
    gateway = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": NS},
        "spec": {
            "gatewayClassName": "proxyless-mesh",
            "listeners": [
                {
                    "name": "teams",
                    "port": 80,
                    "protocol": "HTTP",
                    "allowedRoutes": {
                        "namespaces": {
                            "from": "Selector",
                            "selector": {
                                "matchExpressions": [
                                    {"key": "team", "operator": "In", "values": ["shop"]}
                                ]
                            },
                        },
                        "kinds": [{"kind": "HTTPRoute"}, {"kind": "TCPRoute"}],
                    },
                },
                {
                    "name": "bytes",
                    "port": 9000,
                    "protocol": "TCP",
                    "allowedRoutes": {"kinds": [{"kind": "HTTPRoute"}]},
                },
            ],
        },
    }
    route = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "shop", "namespace": TEAM},
        "spec": {
            "parentRefs": [{"name": "edge", "namespace": NS, "sectionName": "teams"}],
            "hostnames": ["shop.example.com"],
            "rules": [{"backendRefs": [{"name": "shop", "port": 9080}]}],
        },
    }
    kube.apply(*namespaces)
    kube.apply(service, gateway, route)
    lab = LocalMesh(tmp_path)
    try:
        lab.start_control_plane(
            extra_args=[
                "--kubeconfig", str(kube.kubeconfig),
                "--leader-lease", f"{NS}/mesh-leader",
                "--lease-duration", "4s",
            ]
        )  # fmt: skip
        # The invalid kinds do not refuse the Gateway: it is accepted, and each
        # listener says what it cannot serve.
        status = _status(kube, "gateway", "edge", NS, lambda s: len(_listeners(s)) == 2)
        assert _conditions(status["conditions"])["Accepted"] == ("True", "Accepted")
        teams, tcp = _listeners(status)["teams"], _listeners(status)["bytes"]
        assert [k["kind"] for k in teams["supportedKinds"]] == ["HTTPRoute"]
        assert _conditions(teams["conditions"])["ResolvedRefs"] == ("False", "InvalidRouteKinds")
        assert "kinds[1]: TCPRoute of gateway.networking.k8s.io" in next(
            c["message"] for c in teams["conditions"] if c["type"] == "ResolvedRefs"
        )
        assert tcp["supportedKinds"] == []
        assert _conditions(tcp["conditions"])["ResolvedRefs"] == ("False", "InvalidRouteKinds")
        # The route's namespace carries team=shop: attached.
        _status(kube, "httproute", "shop", TEAM, lambda s: _accepted(s) == ("True", "Accepted"))
        _status(kube, "gateway", "edge", NS, lambda s: _attached(s) == 1)
        # Relabelled: no longer picked, the route is not allowed and not attached.
        kube.kubectl("label", "namespace", TEAM, "team=other", "--overwrite")
        not_allowed = ("False", "NotAllowedByListeners")
        _status(kube, "httproute", "shop", TEAM, lambda s: _accepted(s) == not_allowed)
        _status(kube, "gateway", "edge", NS, lambda s: _attached(s) == 0)
        # And back.
        kube.kubectl("label", "namespace", TEAM, "team=shop", "--overwrite")
        _status(kube, "httproute", "shop", TEAM, lambda s: _accepted(s) == ("True", "Accepted"))
    finally:
        lab.close()
