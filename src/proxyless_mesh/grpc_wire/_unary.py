"""A unary-call channel that is grpc_wire's or grpcio's (see `wants_h2`), so
callers handle one error type and one call shape either way."""

from __future__ import annotations

from typing import Any

from proxyless_mesh.grpc_wire._call import H2Channel, Metadata
from proxyless_mesh.grpc_wire._status import GrpcCallError

__all__ = ["UnaryChannel"]


class UnaryChannel:
    """Bytes in, bytes out; failures raise GrpcCallError. Connects on first use."""

    def __init__(self, target: str, *, h2: bool) -> None:
        self.target = target
        self._h2 = h2
        self._channel: Any = None

    async def call(
        self, path: str, request: bytes, *, metadata: Metadata = (), timeout: float | None
    ) -> bytes:
        if self._h2:
            if self._channel is None:
                self._channel = H2Channel(self.target)
            data: bytes = await self._channel.unary(
                path, request, metadata=metadata, timeout=timeout
            )
            return data
        import grpc.aio

        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.target)
        try:
            data = await self._channel.unary_unary(path)(
                request, metadata=tuple(metadata), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise GrpcCallError(exc.code().name, exc.details() or "") from None
        return data

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await (channel.close() if self._h2 else channel.close(None))
