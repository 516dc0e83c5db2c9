"""Gateway API on a real Kubernetes API server (tests/kube.py): `meshctl install`
applies the Gateway API CRDs generated from the loader's tables; a Gateway and
HTTPRoutes applied with kubectl get their status written by the control plane
replica holding the Lease, in the Gateway API's own shape: the Gateway's
Accepted and Programmed conditions, each route's status.parents[] with
Accepted and ResolvedRefs (False, BackendNotFound, for a route to no Service;
Accepted=False, NotAllowedByListeners, for a TCPRoute the HTTP listener does not
serve). Programmed follows the gateway Envoy's live ACKs: NoResources until
`meshctl gateway run` serves the Gateway, True once its Envoy ACKed.

The control plane watches Namespaces: a listener's `from: Selector` picks route
namespaces by their labels and a relabelled Namespace re-evaluates attachment;
a listener kind it cannot serve is reported on the listener (ResolvedRefs=False,
InvalidRouteKinds, supportedKinds the valid ones) while the rest is served."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway_support import http_gateway, running_gateway, wait_for_listener
from kube import KubeCluster
from meshlab import LocalMesh

NS = "gwapi"
GROUP = "gateway.networking.k8s.io"
STATUS_LIMIT = 20.0  # seconds for the status to be written


def _route(name: str, backend: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "parentRefs": [{"name": "web"}],
            "hostnames": [f"{name}.example.com"],
            "rules": [{"backendRefs": [{"name": backend, "port": 9080}]}],
        },
    }


def _status(
    kube: KubeCluster, kind: str, name: str, ready: Any, namespace: str = NS
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


def test_gateway_api_status_is_written_to_the_resources(kube: KubeCluster, tmp_path: Path) -> None:
    meshctl = str(Path(sys.executable).parent / "meshctl")
    subprocess.run([meshctl, "install", "--kubeconfig", str(kube.kubeconfig)], check=True)
    crds = kube.kubectl("get", "crd", "-o", "name")
    for plural in ("gateways", "httproutes", "grpcroutes", "referencegrants", "tcproutes"):
        assert f"customresourcedefinition.apiextensions.k8s.io/{plural}.{GROUP}" in crds
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "reviews", "namespace": NS},
        "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]},
    }
    gateway = http_gateway("web", NS)
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    bytes_route = {
        "apiVersion": f"{GROUP}/v1alpha2",
        "kind": "TCPRoute",
        "metadata": {"name": "bytes", "namespace": NS},
        "spec": {
            "parentRefs": [{"name": "web"}],
            "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}],
        },
    }
    kube.apply(service, gateway, _route("good", "reviews"), _route("lost", "nowhere"), bytes_route)
    lab = LocalMesh(tmp_path)
    try:
        lab.start_control_plane(
            extra_args=[
                # Every namespace's Services: the custom resources are read
                # cluster-wide, and other tests' routes must resolve for the
                # configuration as a whole to load.
                "--kubeconfig", str(kube.kubeconfig),
                "--leader-lease", f"{NS}/mesh-leader",
                "--lease-duration", "4s",
            ]
        )  # fmt: skip
        gateway_status = _status(kube, "gateway", "web", lambda s: s.get("conditions"))
        assert _conditions(gateway_status["conditions"]) == {
            "Accepted": ("True", "Accepted"),
            "Programmed": ("False", "NoResources"),
        }
        (listener,) = gateway_status["listeners"]
        assert listener["name"] == "http"
        # The two HTTPRoutes; not the TCPRoute, which an HTTP listener does not serve.
        assert listener["attachedRoutes"] == 2
        assert [k["kind"] for k in listener["supportedKinds"]] == ["HTTPRoute", "GRPCRoute"]
        assert _conditions(listener["conditions"])["Programmed"] == ("False", "NoResources")
        for name, resolved in (
            ("good", ("True", "ResolvedRefs")),
            ("lost", ("False", "BackendNotFound")),
        ):
            status = _status(kube, "httproute", name, lambda s: s.get("parents"))
            (parent,) = status["parents"]
            assert parent["parentRef"] == {
                "group": GROUP,
                "kind": "Gateway",
                "name": "web",
                "namespace": NS,
            }
            assert parent["controllerName"] == "proxyless-mesh.io/gateway-controller"
            conditions = _conditions(parent["conditions"])
            assert conditions == {"Accepted": ("True", "Accepted"), "ResolvedRefs": resolved}
        lost = _status(kube, "httproute", "lost", lambda s: s.get("parents"))
        message = lost["parents"][0]["conditions"][1]["message"]
        assert "no Service nowhere.gwapi.svc.cluster.local is declared" in message
        # As kubectl shows it (the README's example).
        yaml_out = kube.kubectl("get", f"httproute.{GROUP}", "lost", "-n", NS, "-o", "yaml")
        assert "reason: BackendNotFound" in yaml_out
        (parent,) = _status(kube, "tcproute", "bytes", lambda s: s.get("parents"))["parents"]
        assert _conditions(parent["conditions"])["Accepted"] == ("False", "NotAllowedByListeners")
        # The Gateway's Envoy starts and ACKs: the Lease holder writes Programmed=True.
        label = f"{GROUP}/gateway-name=web"
        with running_gateway(lab, "web", NS, labels=(label,)) as admin:
            wait_for_listener(admin, "0.0.0.0_80")
            programmed = _status(
                kube,
                "gateway",
                "web",
                lambda s: _conditions(s.get("conditions") or [])["Programmed"][0] == "True",
            )
        (condition,) = [c for c in programmed["conditions"] if c["type"] == "Programmed"]
        assert condition["reason"] == "Programmed"
        assert condition["message"] == "its Envoy ACKed the current listeners and routes"
        # Its Envoy gone: no longer programmed.
        _status(
            kube,
            "gateway",
            "web",
            lambda s: _conditions(s["conditions"])["Programmed"] == ("False", "NoResources"),
        )
    finally:
        lab.close()


SEL_NS = "gwsel"  # the selecting Gateway's namespace
TEAM = "gwsel-team"  # the route's, picked by its label


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
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SEL_NS}},
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
        "metadata": {"name": "edge", "namespace": SEL_NS},
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
            "parentRefs": [{"name": "edge", "namespace": SEL_NS, "sectionName": "teams"}],
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
                "--leader-lease", f"{SEL_NS}/mesh-leader",
                "--lease-duration", "4s",
            ]
        )  # fmt: skip
        # The invalid kinds do not refuse the Gateway: it is accepted, and each
        # listener says what it cannot serve.
        status = _status(kube, "gateway", "edge", lambda s: len(_listeners(s)) == 2, SEL_NS)
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
        _status(kube, "httproute", "shop", lambda s: _accepted(s) == ("True", "Accepted"), TEAM)
        _status(kube, "gateway", "edge", lambda s: _attached(s) == 1, SEL_NS)
        # Relabelled: no longer picked, the route is not allowed and not attached.
        kube.kubectl("label", "namespace", TEAM, "team=other", "--overwrite")
        not_allowed = ("False", "NotAllowedByListeners")
        _status(kube, "httproute", "shop", lambda s: _accepted(s) == not_allowed, TEAM)
        _status(kube, "gateway", "edge", lambda s: _attached(s) == 0, SEL_NS)
        # And back.
        kube.kubectl("label", "namespace", TEAM, "team=shop", "--overwrite")
        _status(kube, "httproute", "shop", lambda s: _accepted(s) == ("True", "Accepted"), TEAM)
    finally:
        lab.close()
