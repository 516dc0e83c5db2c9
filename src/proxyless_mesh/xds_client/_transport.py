"""How the ADS stream reaches a server: over `h2` (grpc_wire, no grpcio: the
default when h2 is installed) or over a plain grpc.aio channel. Both give the
client the same call (`start`, `write`, `read` returning None at the end,
`cancel`) and the same error, `GrpcCallError`, so the stream logic in
_client.py is one."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from proxyless_mesh import grpc_wire
from proxyless_mesh.grpc_wire import GrpcCallError

__all__ = ["AdsCall", "Transport", "open_transport"]


class AdsCall(Protocol):
    async def start(self) -> None: ...
    async def write(self, message: Any) -> None: ...
    async def read(self) -> Any: ...
    def cancel(self) -> None: ...


class Transport(Protocol):
    def open(self, method: str, parse: Callable[[bytes], Any]) -> AdsCall: ...
    async def wait_ready(self) -> None: ...
    async def close(self) -> None: ...


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


class _H2Transport:
    def __init__(self, uri: str, user_agent: str) -> None:
        self._channel = grpc_wire.H2Channel(uri, user_agent=user_agent)

    def open(self, method: str, parse: Callable[[bytes], Any]) -> AdsCall:
        return self._channel.stream(method, _serialize, parse)

    async def wait_ready(self) -> None:
        await self._channel.wait_ready()

    async def close(self) -> None:
        await self._channel.close()


class _GrpcioCall:
    """A grpc.aio stream-stream call with grpc_wire's interface."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def start(self) -> None:
        await self._guard(self._call.wait_for_connection())

    async def write(self, message: Any) -> None:
        await self._guard(self._call.write(message))

    async def read(self) -> Any:
        import grpc.aio

        message = await self._guard(self._call.read())
        return None if message is grpc.aio.EOF else message  # type: ignore[attr-defined]

    def cancel(self) -> None:
        self._call.cancel()

    @staticmethod
    async def _guard(step: Any) -> Any:
        import asyncio

        import grpc.aio

        try:
            return await step
        except grpc.aio.AioRpcError as exc:
            raise GrpcCallError(exc.code().name, exc.details() or "") from None
        except asyncio.InvalidStateError as exc:  # a write after the call ended
            raise GrpcCallError("UNAVAILABLE", str(exc)) from None


class _GrpcioTransport:
    def __init__(self, uri: str) -> None:
        import grpc.aio

        # A short reconnect backoff lets the primary's return be noticed
        # within seconds (A71).
        options = [
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        self._channel = grpc.aio.insecure_channel(uri, options=options)

    def open(self, method: str, parse: Callable[[bytes], Any]) -> AdsCall:
        call = self._channel.stream_stream(
            method, request_serializer=_serialize, response_deserializer=parse
        )()  # type: ignore[call-arg]  # no request iterator: written with write()
        return _GrpcioCall(call)

    async def wait_ready(self) -> None:
        import grpc

        channel = self._channel
        state = channel.get_state(try_to_connect=True)
        while state is not grpc.ChannelConnectivity.READY:
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)

    async def close(self) -> None:
        await self._channel.close(grace=None)


def open_transport(uri: str, user_agent: str, choice: str | None = None) -> Transport:
    """The transport for one xDS server (see grpc_wire.wants_h2); grpcio for a
    target only its resolvers know, unless h2 was asked for by name."""
    if not grpc_wire.wants_h2(choice):
        return _GrpcioTransport(uri)
    try:
        return _H2Transport(uri, user_agent)
    except ValueError:
        if (choice or os.environ.get(grpc_wire.TRANSPORT_ENV)) == "h2":
            raise
        return _GrpcioTransport(uri)
