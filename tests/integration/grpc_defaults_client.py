"""Calls a STRICT mesh gRPC server both ways with the defaults, and prints what happened.

    GRPC_XDS_BOOTSTRAP=B python grpc_defaults_client.py TARGET

One JSON object: "native" is the peer identity the server answered to
`mesh.grpc_channel(target, native=True)`; "library_call" what the first call
of a library-mode channel made before the mesh knew the service raised;
"library_create" / "aio_create" what making a library-mode channel (sync,
asyncio) raised once it knew.
"""

from __future__ import annotations

import json
import sys

import grpc

from proxyless_mesh import LibraryModeMtlsError, Mesh, MeshRpcError

READY_TIMEOUT = 20.0
PEER = "/test.Echo/Peer"


def main(target: str) -> int:
    out: dict[str, object] = {}
    with Mesh.from_bootstrap() as mesh:
        out["identity"] = mesh.identity
        library = mesh.grpc_channel(target)  # the mesh has not heard of target yet
        try:
            library.unary_unary(PEER)(b"", timeout=10)
            out["library_call"] = {"ok": True}
        except MeshRpcError as exc:
            out["library_call"] = {"code": exc.code().name, "details": exc.details()}
        for name, make in (
            ("library_create", mesh.grpc_channel),
            ("aio_create", mesh.aio_grpc_channel),
        ):
            try:
                make(target)
                out[name] = {"ok": True}
            except LibraryModeMtlsError as exc:
                out[name] = {"error": type(exc).__name__, "message": str(exc)}
        with mesh.grpc_channel(target, native=True) as channel:
            grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT)
            out["native"] = channel.unary_unary(PEER)(b"", timeout=10).decode()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
