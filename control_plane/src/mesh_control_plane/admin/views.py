"""What the admin endpoints return, as plain JSON-able data.

Kept apart from the HTTP server so the payloads (which `meshctl status`
parses) are built and tested without sockets.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from google.protobuf import json_format

from mesh_control_plane.admin.describe import UnknownHostError, describe_host, policies_of
from mesh_control_plane.admin.mesh_view import mesh_view
from mesh_control_plane.admin.server import HttpError, TextResponse
from mesh_control_plane.admin.simulate import ConfigView, simulate
from mesh_control_plane.config.errors import ConfigProblem
from mesh_control_plane.metrics import CONTENT_TYPE, ControlPlaneMetrics
from mesh_control_plane.translate import ClientKind, NodeInfo
from mesh_control_plane.xds.clients import ClientRecord, short_type_name
from mesh_control_plane.xds.snapshot import SnapshotCache
from proxyless_mesh.errors import XdsResourceError

CONFIG_DUMP_NODE = NodeInfo(id="reference-mesh", kind=ClientKind.MESH)
"""The node config_dump translates for: what our library's clients receive."""


def healthz() -> dict[str, Any]:
    return {"status": "ok"}


def status(
    version: str,
    clients: Sequence[ClientRecord],
    config_errors: Sequence[str],
    trust_domain: str = "cluster.local",
    config_warnings: Sequence[str] = (),
    config_problems: Sequence[ConfigProblem | str] = (),
) -> dict[str, Any]:
    """`GET /status`: the version served, every connected client (with the
    SPIFFE ID its node metadata claims, "" when it names none), config errors
    (as lines, and as `config_problems`: the same by file, kind, name and
    field, for the console), and warnings of the config in use (e.g. a subset
    no DestinationRule defines yet)."""
    return {
        "version": version,
        "clients": [{**c.to_status(), "spiffe": c.spiffe_id(trust_domain)} for c in clients],
        "config_errors": list(config_errors),
        "config_problems": [problem_fields(p) for p in config_problems],
        "config_warnings": list(config_warnings),
    }


def problem_fields(problem: ConfigProblem | str) -> dict[str, Any]:
    """One refused config problem by its parts (a translation problem, which
    names no file, is all message)."""
    if isinstance(problem, str):
        return {"file": "", "kind": "", "name": "", "field": "", "message": problem,
                "code": "", "line": None}  # fmt: skip
    kind, _, name = problem.resource.partition(" ")
    return {
        "file": problem.file,
        "kind": kind,
        "name": name,
        "field": problem.field,
        "message": problem.message,
        "code": problem.code,
        "line": problem.line,
    }


def node_config_dump(
    clients: Sequence[ClientRecord],
    node_id: str,
    more: Sequence[dict[str, Any]] = (),
    workers: int = 0,
) -> dict[str, Any]:
    """`GET /config_dump?node=ID`: what the control plane last sent each
    stream of that node, per type: versions, ACK/NACK and the resources.
    `more` are the streams of that node on the `workers` ADS worker processes
    (`ClientRecord.to_dump`, each with its worker's pid). 404 (HttpError) when
    no client with that node id is connected."""
    streams = [c.to_dump() for c in clients if c.node_id == node_id] + list(more)
    if not streams:
        known = "connected: " + (", ".join(sorted({c.node_id for c in clients})) or "none")
        if workers:  # listing every worker's thousands of clients would help nobody
            known = f"asked the leader and {workers} ADS workers"
        raise HttpError(404, f"no connected client has node id {node_id!r} ({known})")
    return {"node_id": node_id, "streams": streams}


def metrics_page(
    metrics: ControlPlaneMetrics,
    clients: Sequence[ClientRecord],
    config_errors: Sequence[str],
    version: str,
    worker_kinds: Mapping[str, int] | None = None,
) -> TextResponse:
    """`GET /metrics`: Prometheus text; every client kind is listed (0 when
    none is connected) so a dashboard's series never vanish. `worker_kinds`:
    the clients the ADS worker processes serve, by kind."""
    by_kind: Counter[str] = Counter(c.kind for c in clients if c.kind)
    by_kind.update(worker_kinds or {})
    counts = {kind.name: by_kind.get(kind.name, 0) for kind in ClientKind}
    page = metrics.render(clients_by_kind=counts, config_errors=len(config_errors), version=version)
    return TextResponse(page, CONTENT_TYPE)


def _to_dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return result


def config_dump(cache: SnapshotCache, node: NodeInfo = CONFIG_DUMP_NODE) -> dict[str, Any]:
    """`GET /config_dump`: the resources `node`'s kind receives, by type and name."""
    resources = cache.resource_set(node).resources
    return {
        "version": cache.version,
        "kind": node.kind.name,
        "resources": {
            short_type_name(type_url): {name: _to_dict(msg) for name, msg in by_name.items()}
            for type_url, by_name in resources.items()
        },
    }


def describe_view(cache: SnapshotCache, host: str) -> dict[str, Any]:
    """`GET /describe?host=H`: `describe_host` on the config being served."""
    if not host:
        raise HttpError(400, "say which host: /describe?host=HOST")
    try:
        state = mesh_view(cache.config, cache.registry)
        return describe_host(cache.config, cache.registry, state, host, policies_of(cache.config))
    except UnknownHostError as exc:
        raise HttpError(404, str(exc)) from None


def simulate_view(cache: SnapshotCache, query: Mapping[str, str]) -> dict[str, Any]:
    """`GET /simulate?method=M&url=U[&headers=[[k,v],...]][&from=NS/SA[&labels={k: v}]]`:
    `simulate` on the config and registry being served."""
    method, url = query.get("method", "GET"), query.get("url", "")
    if not url:
        raise HttpError(400, "say which request: /simulate?method=GET&url=http://HOST:PORT/PATH")
    try:
        pairs = json.loads(query.get("headers", "[]"))
        headers = [(str(k), str(v)) for k, v in pairs]
    except (ValueError, TypeError) as exc:
        raise HttpError(400, f"headers must be a JSON list of [name, value] pairs: {exc}") from None
    source = query.get("from")
    if source is not None and source.count("/") != 1:
        raise HttpError(400, f"from wants NAMESPACE/SERVICE_ACCOUNT, got {source!r}")
    try:
        labels = {str(k): str(v) for k, v in json.loads(query.get("labels", "{}")).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise HttpError(400, f"labels must be a JSON object of strings: {exc}") from None
    try:
        view = ConfigView.of(cache.config, cache.registry)
        return simulate(view, method, url, headers, source, labels)
    except (XdsResourceError, httpx.InvalidURL) as exc:
        raise HttpError(400, str(exc)) from None
