"""gRPC status codes, the error a failed call raises, and channel targets."""

from __future__ import annotations

import urllib.parse

__all__ = ["CODE_NAMES", "GrpcCallError", "Target", "parse_target"]

#: grpc-status numbers -> the names grpcio's StatusCode uses.
CODE_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)


class GrpcCallError(Exception):
    """A call that ended with a status other than OK, or never got one
    (connection refused or lost: UNAVAILABLE, as grpcio reports it)."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_status(cls, status: str | None, message: str | None) -> GrpcCallError:
        try:
            code = CODE_NAMES[int(status or "")]
        except (ValueError, IndexError):
            code = "UNKNOWN"
        return cls(code, urllib.parse.unquote(message or ""))


class Target:
    """Where a channel connects: a TCP host and port, or a Unix socket path."""

    def __init__(self, host: str, port: int, unix_path: str | None = None) -> None:
        self.host, self.port, self.unix_path = host, port, unix_path

    @property
    def authority(self) -> str:
        if self.unix_path is not None:
            return "localhost"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_target(target: str) -> Target:
    """The target forms grpcio's insecure channels take for the control plane:
    `host:port`, `dns:[//authority/]host:port`, `ipv4:`/`ipv6:` addresses,
    `[v6]:port` and `unix:path`. The port defaults to 443 as in gRPC. Raises
    ValueError for anything else (a name resolver this client does not have)."""
    if target.startswith("unix:"):
        path = target[len("unix:") :]
        path = path[2:] if path.startswith("///") else path
        return Target("localhost", 0, unix_path=path)
    for scheme in ("dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
            if target.startswith("//"):
                target = target[2:].split("/", 1)[-1]  # drop the DNS server authority
            if "," in target:
                raise ValueError(f"{scheme} with several addresses is not supported")
            break
    else:
        if "://" in target or (target.count(":") > 1 and not target.startswith("[")):
            raise ValueError(f"unsupported gRPC target {target!r}")
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = target.partition(":")
    if not host:
        raise ValueError("gRPC target has no host")
    try:
        number = int(port) if port else 443
    except ValueError:
        raise ValueError(f"gRPC target {target!r} has a bad port") from None
    return Target(host, number)
