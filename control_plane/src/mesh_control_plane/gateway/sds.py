"""The gateway agent's SDS server: secrets to its own Envoy over a Unix socket.

Envoy subscribes by name (State of the World, one or more names per stream);
each stream is answered with the named secrets the store holds, and again
whenever the store changes (a renewed workload certificate, a replaced
credential file): that is how Envoy rotates without a restart. A name the
store does not hold is simply not sent, so Envoy keeps the listener warming
(Istio's behaviour for a missing credentialName) rather than serve without it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

from mesh_control_plane.translate.protos import pack

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"


def tls_secret(name: str, chain_pem: bytes, key_pem: bytes) -> secret_pb2.Secret:
    certificate = common_pb2.TlsCertificate()
    certificate.certificate_chain.inline_bytes = chain_pem
    certificate.private_key.inline_bytes = key_pem
    return secret_pb2.Secret(name=name, tls_certificate=certificate)


def roots_secret(name: str, roots_pem: bytes) -> secret_pb2.Secret:
    validation = common_pb2.CertificateValidationContext()
    validation.trusted_ca.inline_bytes = roots_pem
    return secret_pb2.Secret(name=name, validation_context=validation)


class SecretStore:
    """The secrets by name, a version that changes with them, and a wake-up
    for every stream when they do."""

    def __init__(self) -> None:
        self._secrets: dict[str, secret_pb2.Secret] = {}
        self.version = 0
        self._waiters: set[asyncio.Event] = set()

    def update(self, secrets: Mapping[str, secret_pb2.Secret]) -> None:
        """Replace the secrets under these names (others kept); streams wake
        only when something actually changed."""
        changed = {n: s for n, s in secrets.items() if self._secrets.get(n) != s}
        if not changed:
            return
        self._secrets.update(changed)
        self.version += 1
        for waiter in self._waiters:
            waiter.set()

    def remove(self, names: Iterable[str]) -> None:
        """Stop serving these names (Envoy keeps what it was sent)."""
        gone = [n for n in names if self._secrets.pop(n, None) is not None]
        if gone:
            self.version += 1
            for waiter in self._waiters:
                waiter.set()

    def get(self, name: str) -> secret_pb2.Secret | None:
        return self._secrets.get(name)

    def names(self) -> frozenset[str]:
        return frozenset(self._secrets)

    def watch(self, event: asyncio.Event) -> None:
        self._waiters.add(event)

    def unwatch(self, event: asyncio.Event) -> None:
        self._waiters.discard(event)


class SdsServicer:
    def __init__(self, store: SecretStore) -> None:
        self.store = store
        self._nonces = itertools.count(1)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            SDS_SERVICE,
            {
                "StreamSecrets": grpc.stream_stream_rpc_method_handler(
                    self._stream,
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                    response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
                )
            },
        )

    async def _stream(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], context: Any
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        wake = asyncio.Event()
        names: list[frozenset[str] | None] = [None]  # the current subscription

        async def read() -> None:
            async for request in requests:
                subscribed = frozenset(request.resource_names)
                if subscribed != names[0] or not request.response_nonce:
                    names[0] = subscribed
                    wake.set()

        self.store.watch(wake)
        reader = asyncio.create_task(read())
        waiter = asyncio.create_task(wake.wait())
        sent: tuple[int, frozenset[str]] | None = None
        try:
            while True:
                await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if reader.done():  # Envoy closed the stream
                    return
                wake.clear()
                waiter = asyncio.create_task(wake.wait())
                subscribed = names[0]
                if subscribed is None or (self.store.version, subscribed) == sent:
                    continue
                found = [s for n in sorted(subscribed) if (s := self.store.get(n)) is not None]
                sent = (self.store.version, subscribed)
                if found:
                    yield discovery_pb2.DiscoveryResponse(
                        version_info=str(self.store.version),
                        type_url=SECRET_TYPE,
                        nonce=str(next(self._nonces)),
                        resources=[pack(secret) for secret in found],
                    )
        finally:
            self.store.unwatch(wake)
            reader.cancel()
            waiter.cancel()


async def start_sds_server(
    store: SecretStore, socket_path: str, *others: grpc.GenericRpcHandler[Any, Any]
) -> grpc.aio.Server:
    """SDS (and the `others` services) on the Unix socket `socket_path`."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((SdsServicer(store).handler(), *others))
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    return server
