"""The registration service, served on the xDS port beside ADS.

Two unary methods with JSON bodies (no new protobufs for the library to ship):

    /proxyless_mesh.registration.v1.Registration/Register
        {"node_id", "group": "ns/name", "address", "ports": {name: port},
         "labels": {..}, "locality": "r/z/s", "token"}  -> {"state": "..."}
    /proxyless_mesh.registration.v1.Registration/Deregister
        {"node_id", "token"}                          -> {"deregistered": bool}

A refused registration ends with the gRPC status of `RegistrationRefused.code` and
its reason as details, so `Mesh(register=...)` can fail with that sentence. The
ADS server reports stream open/close per node id through `StreamObserver`, which
is how health follows the stream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2

from mesh_control_plane.registry.embedded import (
    EmbeddedRegistry,
    RegistrationRefused,
    RegistrationRequest,
)

log = logging.getLogger(__name__)

__all__ = ["SERVICE_NAME", "RegistrationService", "StreamObserver"]

SERVICE_NAME = "proxyless_mesh.registration.v1.Registration"


def _load(data: bytes) -> Any:
    return json.loads(data.decode())


def _dump(obj: Any) -> bytes:
    return json.dumps(obj).encode()


class StreamObserver:
    """Tells the embedded registry when a node's ADS streams open and close."""

    def __init__(self, registry: EmbeddedRegistry) -> None:
        self._registry = registry

    def __call__(self, node: base_pb2.Node, opened: bool) -> None:
        if not node.id:
            return
        if opened:
            self._registry.stream_opened(node.id)
        else:
            self._registry.stream_closed(node.id)


class RegistrationService:
    """The gRPC face of the embedded registry."""

    def __init__(self, registry: EmbeddedRegistry) -> None:
        self._registry = registry

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        methods = {
            "Register": grpc.unary_unary_rpc_method_handler(
                self._register, request_deserializer=_load, response_serializer=_dump
            ),
            "Deregister": grpc.unary_unary_rpc_method_handler(
                self._deregister, request_deserializer=_load, response_serializer=_dump
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)

    async def _register(self, body: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            request = _request(body)
            state = self._registry.register(request)
        except RegistrationRefused as exc:
            await context.abort(getattr(grpc.StatusCode, exc.code), exc.reason)
            raise  # abort raises; this line is for type checkers
        return {"state": state.value}

    async def _deregister(self, body: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        node_id = body.get("node_id") if isinstance(body, Mapping) else None
        if not isinstance(node_id, str) or not node_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node_id is required")
        state = self._registry.state_of(str(node_id))
        if state is None:
            return {"deregistered": False}
        # The caller proves it is the workload: the same token as at registration
        # would be ideal; the node id plus a valid token for the group's identity is
        # what we check, so one workload cannot drain another.
        try:
            self._registry.check_owner(str(node_id), str(body.get("token", "")))
        except RegistrationRefused as exc:
            await context.abort(getattr(grpc.StatusCode, exc.code), exc.reason)
        return {"deregistered": self._registry.deregister(str(node_id))}


def _request(body: Any) -> RegistrationRequest:
    if not isinstance(body, Mapping):
        raise RegistrationRefused("INVALID_ARGUMENT", "the request must be a JSON object")
    ports = body.get("ports") or {}
    labels = body.get("labels") or {}
    if not isinstance(ports, Mapping) or not all(
        isinstance(v, int) and 0 < v < 65536 for v in ports.values()
    ):
        raise RegistrationRefused("INVALID_ARGUMENT", "ports must map names to port numbers")
    if not isinstance(labels, Mapping):
        raise RegistrationRefused("INVALID_ARGUMENT", "labels must be a mapping")
    return RegistrationRequest(
        node_id=str(body.get("node_id", "")),
        group=str(body.get("group", "")),
        address=str(body.get("address", "")),
        ports={str(k): int(v) for k, v in ports.items()},
        labels={str(k): str(v) for k, v in labels.items()},
        locality=str(body.get("locality", "")),
        token=str(body.get("token", "")),
    )
