"""The Mesh's local admin endpoint: CSDS over gRPC, bound only when asked.

`Mesh(..., admin_address="127.0.0.1:0")` starts one `DiagnosticsServer` on
the mesh's own event loop, beside the xDS client it reports on, so reading
the client's status needs no lock. It serves
`envoy.service.status.v3.ClientStatusDiscoveryService` (the service
`grpcio-csds` adds to a grpcio server): `meshctl config-dump NODE --csds
HOST:PORT` and any CSDS tool can see what this process believes. Off by
default: an endpoint that reveals configuration is the operator's choice,
and it is meant for loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from proxyless_mesh.errors import MeshError
from proxyless_mesh.xds_client import XdsClient, build_node, client_config

__all__ = ["CsdsServicer", "DiagnosticsServer"]

_USER_AGENT = "proxyless-mesh"


class CsdsServicer(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):  # type: ignore[misc]
    """Answers every request with the one ClientConfig `source()` builds now.

    A process holds one xDS client, so node matchers are not consulted: there
    is nothing else to choose from (grpcio's CSDS does the same).
    """

    def __init__(self, source: Callable[[], Any]) -> None:
        self._source = source

    async def FetchClientStatus(self, request: Any, context: Any) -> Any:  # gRPC method name
        return csds_pb2.ClientStatusResponse(config=[self._source()])

    async def StreamClientStatus(  # gRPC method name
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for _ in request_iterator:
            yield csds_pb2.ClientStatusResponse(config=[self._source()])


class DiagnosticsServer:
    """A grpc.aio server carrying CSDS for one xDS client.

    Holds the server reference (a collected grpc server stops serving).
    """

    def __init__(self, xds: XdsClient, node: Any) -> None:
        self._xds = xds
        self._node = node
        self._server: grpc.aio.Server | None = None
        self.address = ""

    @classmethod
    def for_client(cls, xds: XdsClient, bootstrap: Any) -> DiagnosticsServer:
        """The server for `xds`, reporting the node it sends (from `bootstrap`)."""
        return cls(xds, build_node(bootstrap, _USER_AGENT))

    def client_config(self) -> Any:
        """The ClientConfig served now (also handy in tests and logs)."""
        return client_config(self._node, self._xds.resource_status())

    async def start(self, address: str) -> str:
        """Listen on "HOST:PORT" (port 0 picks one) on the running loop;
        returns the bound "HOST:PORT". MeshError if it cannot bind."""
        server = grpc.aio.server()
        csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(
            CsdsServicer(self.client_config), server
        )
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio's way of saying the bind failed
            raise MeshError(f"cannot bind the mesh admin endpoint on {address}: {exc}") from exc
        await server.start()
        host = address.rpartition(":")[0] or "127.0.0.1"
        self._server, self.address = server, f"{host}:{port}"
        return self.address

    async def stop(self) -> None:
        """Stop serving; CSDS calls in flight are cancelled (they are reads)."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(None)
