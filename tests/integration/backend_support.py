"""What the registration backend scripts share (run as scripts, not test modules).

Each backend is started by `meshlab.start_process`, which passes `--ready-file F`
and waits for F to appear: `write_ready` is that protocol's other side, and
`backend_parser` the command line every backend takes. The gRPC backends answer
/test.Echo/Version with their version so a test can tell which one it reached.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import grpc

ECHO_SERVICE = "test.Echo"


def write_ready(path: str, payload: dict[str, object]) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(payload))
    os.replace(tmp, path)  # atomic: the parent reads it as soon as it exists


def backend_parser() -> argparse.ArgumentParser:
    """--bootstrap B --group ns/name --version V --ready-file F; scripts add theirs."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--ready-file", required=True)
    return parser


def echo_handler(version: str, *, aio: bool) -> grpc.GenericRpcHandler[Any, Any]:
    """/test.Echo/Version answers `version`: a coroutine for a grpc.aio server
    (which runs no plain function without a migration thread pool), a plain
    function for a sync grpc.server."""

    def answer(request: bytes, context: Any) -> bytes:
        return version.encode()

    async def answer_aio(request: bytes, context: Any) -> bytes:
        return answer(request, context)

    method = grpc.unary_unary_rpc_method_handler(answer_aio if aio else answer)
    return grpc.method_handlers_generic_handler(ECHO_SERVICE, {"Version": method})
