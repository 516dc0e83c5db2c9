"""gRPC over HTTP/2 without grpcio: the control plane's two services (ADS and the
CA's CreateCertificate) spoken over `h2`, so a process that meshes only HTTP
never loads grpcio (issue 25: grpcio alone is ~12 MB of RSS and ~0.1 s of
import).

Only what those two calls need: plaintext HTTP/2 with prior knowledge (the
bootstrap's `insecure` channel creds), unary and bidirectional-streaming calls,
messages framed as gRPC says (1-byte compressed flag, 4-byte big-endian
length, no compression), status from the trailers (or a trailers-only
response), `grpc-timeout`, and `-bin` metadata in base64. Messages are bytes:
encoding them is the caller's business.

When `h2` is not installed, `available` is False and callers keep using grpcio
(`wants_h2` says which to use).
"""

from __future__ import annotations

import os

from proxyless_mesh.grpc_wire._call import H2Channel, StreamCall
from proxyless_mesh.grpc_wire._status import CODE_NAMES, GrpcCallError, parse_target
from proxyless_mesh.grpc_wire._unary import UnaryChannel

__all__ = [
    "CODE_NAMES",
    "TRANSPORT_ENV",
    "GrpcCallError",
    "H2Channel",
    "StreamCall",
    "UnaryChannel",
    "available",
    "parse_target",
    "unary_channel",
    "wants_h2",
]

#: "grpcio" makes the library's control-plane calls (ADS, CA) use grpcio (an
#: A/B, or a target form only grpcio resolves); "h2" insists on grpc_wire.
#: Unset: grpc_wire when h2 is installed.
TRANSPORT_ENV = "PROXYLESS_MESH_CONTROL_TRANSPORT"


def _h2_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("h2") is not None


#: Whether gRPC can be spoken without grpcio here.
available: bool = _h2_installed()


def unary_channel(target: str, transport: str | None = None) -> UnaryChannel:
    """A channel for unary calls to `target` over grpc_wire or grpcio (`wants_h2`)."""
    return UnaryChannel(target, h2=wants_h2(transport))


def wants_h2(choice: str | None = None) -> bool:
    """Whether to speak gRPC with grpc_wire: `choice` ("h2" / "grpcio"), else
    the environment's (TRANSPORT_ENV), else whether h2 is installed."""
    choice = choice or os.environ.get(TRANSPORT_ENV) or None
    if choice not in (None, "h2", "grpcio"):
        raise ValueError(f"{TRANSPORT_ENV} must be 'h2' or 'grpcio', not {choice!r}")
    if choice == "h2" and not available:
        raise ValueError(f"{TRANSPORT_ENV}=h2 but the h2 package is not installed")
    return choice == "h2" or (choice is None and available)
