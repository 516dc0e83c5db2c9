"""Span names and tags as Istio's proxies (Envoy's tracer with Istio's
custom tags) set them, so Jaeger/Tempo searches written for Istio find the
mesh's spans. They sit beside the OpenTelemetry semantic-convention
attributes, which stay.

Envoy names a span after its route's decorator, by default
`<host>:<port>/*`; Istio tags every span with `component: proxy`,
`node_id`, `zone`, `istio.canonical_service`, `istio.canonical_revision`,
`istio.mesh_id`, `istio.namespace`, and the request's `http.url`,
`http.method`, `http.protocol`, `upstream_cluster`, `peer.address`,
`guid:x-request-id`, `user_agent`; on completion `http.status_code`,
`response_flags`, `request_size`, `response_size` and `error` (for a 5xx
or a failure).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxyless_mesh.telemetry._call import Call
    from proxyless_mesh.telemetry._labels import Workload


def span_name(authority: str) -> str:
    """Envoy's default operation name: `<host>:<port>/*` (port 80 unsaid)."""
    host, sep, port = authority.rpartition(":")
    if not sep or not port.isdigit():
        host, port = authority, "80"
    return f"{host}:{port}/*"


def workload_tags(workload: Workload) -> dict[str, str]:
    """The tags naming this proxy: the same on every span, built once."""
    peer = workload.peer
    tags = {
        "component": "proxy",
        "node_id": workload.node_id or workload.name,
        "istio.canonical_service": peer.canonical_service,
        "istio.canonical_revision": peer.canonical_revision,
        "istio.mesh_id": workload.mesh_id,
        "istio.namespace": workload.namespace,
    }
    if workload.zone:
        tags["zone"] = workload.zone
    return tags


def start_tags(call: Call, scheme: str = "http") -> dict[str, Any]:
    tags: dict[str, Any] = dict(call.telemetry.span_tags)
    tags["http.method"] = call.method
    tags["http.url"] = f"{scheme}://{call.authority}{call.path}"
    tags["http.protocol"] = call.http_version or (
        "HTTP/2" if call.protocol == "grpc" else "HTTP/1.1"
    )
    if call.request_id:
        tags["guid:x-request-id"] = call.request_id
    return tags


def end_tags(call: Call, flag_text: str, failed: bool) -> dict[str, Any]:
    tags: dict[str, Any] = {
        "http.status_code": str(call.status),
        "response_flags": flag_text,
        "request_size": str(call.request_bytes),
        "response_size": str(call.response_bytes),
    }
    if call.cluster:
        tags["upstream_cluster"] = call.cluster
        tags["upstream_cluster.name"] = call.cluster
    if call.upstream_host:
        tags["peer.address"] = call.upstream_host
    if call.request_id:
        tags["guid:x-request-id"] = call.request_id
    if call.log_extra and call.log_extra.get("REQ(USER-AGENT)"):
        tags["user_agent"] = call.log_extra["REQ(USER-AGENT)"]
    if failed:
        tags["error"] = True
    return tags
