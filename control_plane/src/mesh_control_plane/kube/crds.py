"""CustomResourceDefinitions for the Istio kinds the loader supports, generated
from the loader's own tables (config/documents.py's PARSERS and API versions,
config/supported.py's fields), so a CRD cannot promise a kind or field the
control plane would refuse.

The schemas deliberately keep `spec` open (x-kubernetes-preserve-unknown-fields):
the control plane's strict loader is the validator, and it must see a bad resource
to say what is wrong with it, by field path, in the resource's `status.conditions`
(an API server that refused the apply would say less, and say it differently). The
accepted top-level spec fields are listed as properties with their meaning in
`kubectl explain`; the refused ones say so in their description.

The names are Istio's (`virtualservices.networking.istio.io` ...): a cluster that
already has Istio's CRDs keeps them (`meshctl install` leaves CRDs it does not own
alone unless told `--force`), and the control plane reads the same resources.
"""

from __future__ import annotations

import copy
from typing import Any

from mesh_control_plane.config.documents import (
    GATEWAY_API_ALPHA_PARSERS,
    GATEWAY_API_PARSERS,
    NETWORKING_API_VERSIONS,
    PARSERS,
    SECURITY_API_VERSIONS,
)
from mesh_control_plane.config.parse_gateway_api import API_VERSIONS as GATEWAY_API_VERSIONS
from mesh_control_plane.config.parse_gateway_api_l4 import API_VERSIONS as ALPHA_VERSIONS
from mesh_control_plane.config.parse_telemetry import API_VERSIONS as TELEMETRY_API_VERSIONS
from mesh_control_plane.config.supported import FIELDS

__all__ = ["ACCEPTED", "GATEWAY_API_GROUP", "KINDS", "KindInfo", "crd", "crds"]

ACCEPTED = "Accepted"  # the condition type the control plane writes
FIELD_MANAGER = "proxyless-mesh"


class KindInfo:
    """Where a kind lives in the API."""

    def __init__(self, kind: str, group: str, versions: tuple[str, ...], label: str = "") -> None:
        self.kind = kind
        self.group = group
        self.versions = versions  # newest (storage) first
        self.label = label or f"{kind} spec"  # its row in config/supported.py's FIELDS
        lower = kind.lower()
        consonant_y = lower.endswith("y") and lower[-2:-1] not in tuple("aeiou")
        self.plural = lower[:-1] + "ies" if consonant_y else lower + "s"  # gateways, policies

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"

    def path(self, namespace: str = "", name: str = "") -> str:
        """The collection (all namespaces, or one) or one object's path."""
        base = f"/apis/{self.group}/{self.versions[0]}"
        if not namespace:
            return f"{base}/{self.plural}"
        path = f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{path}/{name}" if name else path


def _kinds() -> dict[str, KindInfo]:
    by_group: dict[str, tuple[str, ...]] = {}
    for api_version in (*NETWORKING_API_VERSIONS, *SECURITY_API_VERSIONS, *TELEMETRY_API_VERSIONS):
        group, _, version = api_version.partition("/")
        by_group[group] = (*by_group.get(group, ()), version)
    kinds = {}
    for kind in sorted(PARSERS):
        group = (
            "security.istio.io"
            if kind in ("AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication")
            else "telemetry.istio.io"
            if kind == "Telemetry"
            else "networking.istio.io"
        )
        kinds[kind] = KindInfo(kind, group, by_group[group])
    # Gateway API kinds, generated the same way (the upstream CRDs are not
    # installed by us; a cluster that has them keeps them, see the docstring).
    group = GATEWAY_API_GROUP
    versions = tuple(v.partition("/")[2] for v in GATEWAY_API_VERSIONS)
    for kind in sorted(GATEWAY_API_PARSERS):
        if kind in kinds:  # Gateway: Istio's keeps the plain key
            label = f"{kind} ({group}) spec"
            kinds[f"{kind}.{group}"] = KindInfo(kind, group, versions, label)
        else:
            kinds[kind] = KindInfo(kind, group, versions)
    for kind in sorted(GATEWAY_API_ALPHA_PARSERS):  # TLSRoute, TCPRoute: v1alpha2 only
        kinds[kind] = KindInfo(kind, group, tuple(v.partition("/")[2] for v in ALPHA_VERSIONS))
    return kinds


GATEWAY_API_GROUP = "gateway.networking.k8s.io"


KINDS = _kinds()
"""Every kind the loader parses, with its group and served versions; keyed by
kind, the Gateway API's Gateway as `Gateway.gateway.networking.k8s.io`."""


def _spec_schema(info: KindInfo) -> dict[str, Any]:
    kind = info.kind
    properties: dict[str, Any] = {}
    for where, accepted, refused in FIELDS:
        if where != info.label:
            continue
        for name in accepted:
            properties[name] = {
                "x-kubernetes-preserve-unknown-fields": True,
                "description": f"{info.group} {kind}.{name}; checked by the control plane.",
            }
        for name in refused:
            if "_" not in name:  # snake_case spellings are aliases of typos
                properties[name] = {
                    "x-kubernetes-preserve-unknown-fields": True,
                    "description": "Not supported yet: the control plane refuses it.",
                }
    schema: dict[str, Any] = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "description": f"{info.group} {kind} spec, validated by the proxyless-mesh control "
        "plane (its verdict is in status).",
    }
    if properties:
        schema["properties"] = properties
    return schema


def crd(info: KindInfo) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind (every version the same schema)."""
    schema = {
        "type": "object",
        "properties": {
            "spec": _spec_schema(info),
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    columns = [
        {
            "name": "Accepted",
            "type": "string",
            "jsonPath": f'.status.conditions[?(@.type=="{ACCEPTED}")].status',
        },
        {
            "name": "Reason",
            "type": "string",
            "jsonPath": f'.status.conditions[?(@.type=="{ACCEPTED}")].reason',
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    versions = [
        {
            "name": version,
            "served": True,
            "storage": n == 0,
            # copies: one object twice would be a YAML anchor in --print's output
            "schema": {"openAPIV3Schema": copy.deepcopy(schema)},
            "subresources": {"status": {}},
            "additionalPrinterColumns": copy.deepcopy(columns),
        }
        for n, version in enumerate(info.versions)
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": info.crd_name,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
            **_approval(info),
        },
        "spec": {
            "group": info.group,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.kind.lower(),
                "categories": [
                    "gateway-api" if info.group == GATEWAY_API_GROUP else "istio-io",
                    "proxyless-mesh",
                ],
            },
            "versions": versions,
        },
    }


def _approval(info: KindInfo) -> dict[str, Any]:
    """A *.k8s.io group is protected: the API server takes its CRDs only with
    the approval annotation, a link to where the API was approved (the Gateway
    API project, whose kinds and names these are)."""
    if not info.group.endswith(".k8s.io"):
        return {}
    return {
        "annotations": {
            "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api"
        }
    }


def crds() -> list[dict[str, Any]]:
    return [crd(info) for info in KINDS.values()]
