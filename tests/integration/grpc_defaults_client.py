"""Calls a STRICT mesh gRPC server every way with the defaults, and prints what happened.

    GRPC_XDS_BOOTSTRAP=B python grpc_defaults_client.py TARGET IMPOSTOR

One JSON object: "library", "aio", "native" and "aio_native" are the peer
identities the server answered to `mesh.grpc_channel(target)`,
`mesh.aio_grpc_channel(target)` and the same with `native=True`; "impostor"
what a library-mode call raised to IMPOSTOR, the same server declared with
another serviceAccount.
"""

from __future__ import annotations

import asyncio
import json
import sys

import grpc

from proxyless_mesh import Mesh

READY_TIMEOUT = 20.0
PEER = "/test.Echo/Peer"


async def aio_call(mesh: Mesh, target: str, *, native: bool = False) -> str:
    async with mesh.aio_grpc_channel(target, native=native) as channel:
        answer: bytes = await channel.unary_unary(PEER)(b"", timeout=10)
        return answer.decode()


def main(target: str, impostor: str) -> int:
    out: dict[str, object] = {}
    with Mesh.from_bootstrap() as mesh:
        out["identity"] = mesh.identity
        with mesh.grpc_channel(target) as library:
            out["library"] = library.unary_unary(PEER)(b"", timeout=10).decode()
        out["aio"] = asyncio.run(aio_call(mesh, target))
        with mesh.grpc_channel(impostor) as wrong:
            try:
                wrong.unary_unary(PEER)(b"", timeout=10)
                out["impostor"] = {"ok": True}
            except grpc.RpcError as exc:
                out["impostor"] = {"code": exc.code().name, "details": exc.details()}
        with mesh.grpc_channel(target, native=True) as channel:
            grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT)
            out["native"] = channel.unary_unary(PEER)(b"", timeout=10).decode()
        out["aio_native"] = asyncio.run(aio_call(mesh, target, native=True))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
