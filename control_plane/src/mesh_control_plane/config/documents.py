"""One YAML document -> one typed resource: apiVersion, kind, metadata, spec.

The envelope is checked like Kubernetes would (name syntax, known metadata
keys) so a manifest that works here also applies to a cluster, and output of
`kubectl get -o yaml` (status, resourceVersion, ``kind: List``) loads as is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .gateway_api_refs import ReferenceGrant, parse_reference_grant
from .label_selector import Namespace, parse_namespace
from .model import (
    AuthorizationPolicy,
    DestinationRule,
    Meta,
    PeerAuthentication,
    RequestAuthentication,
    ServiceEntry,
    VirtualService,
    WorkloadEntry,
)
from .parse_gateway import Gateway, parse_gateway
from .parse_gateway_api import API_VERSIONS as GATEWAY_API_VERSIONS
from .parse_gateway_api import parse_grpc_route, parse_http_route, parse_k8s_gateway
from .parse_gateway_api_l4 import API_VERSIONS as GATEWAY_API_ALPHA_VERSIONS
from .parse_gateway_api_l4 import parse_tcp_route, parse_tls_route
from .parse_mesh_config import MeshConfigMap, parse_mesh_config_map
from .parse_routing import parse_destination_rule, parse_virtual_service
from .parse_security import (
    parse_authorization_policy,
    parse_peer_authentication,
    parse_request_authentication,
)
from .parse_services import parse_service_entry, parse_workload_entry
from .parse_sidecar import Sidecar, parse_sidecar
from .parse_telemetry import API_VERSIONS as TELEMETRY_API_VERSIONS
from .parse_telemetry import Telemetry, parse_telemetry
from .parse_workload_group import parse_workload_group_resource
from .schema import (
    MISSING,
    NOT_SUPPORTED,
    Problems,
    check_str,
    check_str_map,
    is_dns_label,
    is_dns_subdomain,
    read_object,
    type_name,
)
from .workload_group import WorkloadGroup

Resource = (
    ServiceEntry
    | WorkloadEntry
    | DestinationRule
    | VirtualService
    | PeerAuthentication
    | AuthorizationPolicy
    | RequestAuthentication
    | WorkloadGroup
    | Telemetry
    | Sidecar
    | Gateway
    | ReferenceGrant
    | MeshConfigMap
    | Namespace
)
_Parser = Callable[[Problems, Meta, Mapping[str, Any]], Resource]

NETWORKING_API_VERSIONS = (
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
)
SECURITY_API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
PARSERS: dict[str, _Parser] = {
    "AuthorizationPolicy": parse_authorization_policy,
    "DestinationRule": parse_destination_rule,
    "Gateway": parse_gateway,
    "PeerAuthentication": parse_peer_authentication,
    "RequestAuthentication": parse_request_authentication,
    "ServiceEntry": parse_service_entry,
    "Sidecar": parse_sidecar,
    "Telemetry": parse_telemetry,
    "VirtualService": parse_virtual_service,
    "WorkloadEntry": parse_workload_entry,
    "WorkloadGroup": parse_workload_group_resource,
}
GATEWAY_API_PARSERS: dict[str, _Parser] = {
    "Gateway": parse_k8s_gateway,
    "HTTPRoute": parse_http_route,
    "GRPCRoute": parse_grpc_route,
    "ReferenceGrant": parse_reference_grant,
}
# Kinds the Gateway API serves only in its experimental channel (v1alpha2).
GATEWAY_API_ALPHA_PARSERS: dict[str, _Parser] = {
    "TLSRoute": parse_tls_route,
    "TCPRoute": parse_tcp_route,
}
_GATEWAY_API_LATER = ("GatewayClass", "UDPRoute", "BackendTLSPolicy")
_SECURITY_KINDS = frozenset({"AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication"})
# Istio kinds a user may reasonably write: named so the error says "not yet", not "what?".
_LATER_KINDS = ("ProxyConfig",)
# Kinds that patch or extend Envoy itself: there is no Envoy in-process to apply them to.
_ENVOY_KINDS = ("EnvoyFilter", "TrafficExtension", "WasmPlugin")
_TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
# Kubernetes ObjectMeta: what kubectl prints is accepted; only these four are read.
_META_FIELDS = ("name", "namespace", "labels", "annotations")
_META_IGNORED = (
    "generateName",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
    "finalizers",
    "managedFields",
)


@dataclass(frozen=True)
class Document:
    """A YAML document and where it starts (1-based line, None when not from a file)."""

    file: str
    data: object
    line: int | None = None


def expand_lists(doc: Document, problems: Problems) -> Iterator[Document]:
    """A `kind: List` (kubectl's output for several objects) stands for its items."""
    data = doc.data
    if not (isinstance(data, Mapping) and data.get("kind") == "List"):
        yield doc
        return
    obj = read_object(problems, data, "", ("apiVersion", "kind", "items", "metadata"))
    items = obj.get("items", [])
    if not isinstance(items, list):
        problems.add("items", f"expected a list, got {type_name(items)}")
        return
    for item in items:
        yield Document(doc.file, item, doc.line)


def parse_document(problems: Problems, doc: Document) -> tuple[Meta | None, Resource | None]:
    """The identity and typed resource of `doc`, each None when not valid.

    The identity (kind, namespace, name) can be valid while the spec is not;
    the caller still uses it to catch a resource defined twice. `problems`
    locates by file and line; once the kind and name are known, problems are
    scoped to the resource so each message names it.
    """
    start = len(problems.sink)
    data = doc.data
    if not isinstance(data, Mapping):
        problems.add("", f"expected a Kubernetes-style resource (a mapping), got {type_name(data)}")
        return None, None
    kind = _check_kind(problems, data)
    if kind is None:
        read_object(problems, data, "", _TOP_FIELDS)
        return None, None
    meta, scoped = _parse_meta(problems, data.get("metadata"), kind, doc.file)
    identity = meta if meta.name else None
    if kind == "ConfigMap":
        read_object(scoped, data, "", ("apiVersion", "kind", "metadata", "data"))
        mesh = parse_mesh_config_map(scoped, meta, data.get("data"))
        return identity, (mesh if len(problems.sink) == start and identity else None)
    if kind == "Namespace":
        namespace = parse_namespace(scoped, meta, data)
        return identity, (namespace if len(problems.sink) == start and identity else None)
    read_object(scoped, data, "", _TOP_FIELDS)
    if data.get("spec") is None:
        scoped.add("spec", MISSING)
        return identity, None
    parsers = _gateway_api_parsers(data.get("apiVersion")) or PARSERS
    resource = parsers[kind](scoped, meta, data["spec"])
    if len(problems.sink) != start or identity is None:
        return identity, None
    return identity, resource


def _gateway_api_parsers(api_version: object) -> dict[str, _Parser] | None:
    """The Gateway API kinds read at `api_version` (None: not the Gateway API's)."""
    if api_version in GATEWAY_API_VERSIONS:
        return GATEWAY_API_PARSERS
    if api_version in GATEWAY_API_ALPHA_VERSIONS:
        return GATEWAY_API_ALPHA_PARSERS
    return None


def _check_kind(problems: Problems, envelope: Mapping[str, Any]) -> str | None:
    """The kind, when it and the apiVersion are both supported."""
    kind = None
    if envelope.get("kind") is None:
        problems.add("kind", MISSING)
    else:
        kind = check_str(problems, envelope["kind"], "kind")
    api_version = envelope.get("apiVersion")
    if api_version is None:
        problems.add("apiVersion", MISSING)
    if kind is None:
        return None
    if kind == "ConfigMap" and api_version == "v1":
        return kind  # only Istio's mesh config (parse_mesh_config)
    if kind == "Namespace" and api_version == "v1":
        return kind  # its labels, for allowedRoutes selectors (label_selector.py)
    gateway_api = _gateway_api_parsers(api_version)
    if gateway_api is not None:
        if kind in gateway_api:
            return kind
        named = _refused_kind_problems(problems, kind, envelope.get("metadata"))
        if kind in GATEWAY_API_PARSERS or kind in GATEWAY_API_ALPHA_PARSERS:
            where: tuple[str, ...] = GATEWAY_API_VERSIONS
            if kind in GATEWAY_API_ALPHA_PARSERS:
                where = GATEWAY_API_ALPHA_VERSIONS
            named.add("apiVersion", f"{kind} is read at {', '.join(where)}")
        elif kind in _GATEWAY_API_LATER:
            named.add("kind", f"{kind} is {NOT_SUPPORTED}")
        else:
            named.add("kind", f'unknown kind "{kind}"')
        return None
    if kind not in PARSERS:
        named = _refused_kind_problems(problems, kind, envelope.get("metadata"))
        if kind in _ENVOY_KINDS:
            named.add("kind", f"{kind} is Envoy-specific, not applicable in-process")
        elif kind in _LATER_KINDS:
            named.add("kind", f"{kind} is {NOT_SUPPORTED}")
        else:
            supported = ", ".join(sorted(PARSERS))
            named.add("kind", f'unknown kind "{kind}" (supported: {supported})')
        return None
    versions = SECURITY_API_VERSIONS if kind in _SECURITY_KINDS else NETWORKING_API_VERSIONS
    if kind == "Telemetry":
        versions = TELEMETRY_API_VERSIONS
    if api_version is not None and api_version not in versions:
        expected = ", ".join(versions)
        problems.add(
            "apiVersion", f'unsupported apiVersion "{api_version}" for {kind} (expected {expected})'
        )
        return None
    return kind if api_version is not None else None


def _refused_kind_problems(problems: Problems, kind: str, metadata: object) -> Problems:
    """Problems naming the refused resource (`Kind ns/name`) when its metadata
    says who it is, so the message names what to delete or change."""
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str):
        return problems
    namespace = metadata.get("namespace")
    namespace = namespace if isinstance(namespace, str) and namespace else "default"
    return Problems(problems.sink, problems.file, f"{kind} {namespace}/{metadata['name']}")


def _parse_meta(problems: Problems, raw: object, kind: str, file: str) -> tuple[Meta, Problems]:
    """The resource's Meta (name "" when missing or invalid) and the Problems to
    report the rest of it to: named after the resource once its name is known."""
    if raw is None:
        problems.add("metadata", MISSING)
        return Meta(kind=kind, name="", namespace="default", file=file), problems
    if not isinstance(raw, Mapping):
        problems.add("metadata", f"expected a mapping, got {type_name(raw)}")
        return Meta(kind=kind, name="", namespace="default", file=file), problems
    obj = raw
    name = _name_part(problems, obj, "name", is_dns_subdomain, '"-" and "."')
    namespace = "default"
    if obj.get("namespace") is not None:
        namespace = _name_part(problems, obj, "namespace", is_dns_label, 'and "-"')
        name = name if namespace else ""
    meta = Meta(kind=kind, name=name, namespace=namespace or "default", file=file)
    scoped = Problems(problems.sink, file, meta.ref) if name else problems
    read_object(scoped, raw, "metadata", (*_META_FIELDS, *_META_IGNORED))
    for key in ("labels", "annotations"):
        if obj.get(key) is not None:
            check_str_map(scoped, obj[key], f"metadata.{key}")
    annotations = obj.get("annotations")
    if isinstance(annotations, Mapping) and annotations:
        pairs = sorted((str(k), str(v)) for k, v in annotations.items())
        meta = replace(meta, annotations=tuple(pairs))
    return meta, scoped


def _name_part(
    problems: Problems,
    obj: Mapping[str, Any],
    key: str,
    valid: Callable[[str], bool],
    allowed: str,
) -> str:
    """metadata.name or .namespace if valid, else "" (reported)."""
    where = f"metadata.{key}"
    if obj.get(key) is None:
        problems.add(where, MISSING)
        return ""
    text = check_str(problems, obj[key], where)
    if text is None:
        return ""
    if not valid(text):
        problems.add(where, f'invalid {key} "{text}" (lower-case letters, digits {allowed})')
        return ""
    return text
