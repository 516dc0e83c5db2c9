"""`import proxyless_mesh` loads no gRPC, protobuf, OpenTelemetry SDK or
cryptography (issue 25): the public names load on first use, and
`MeshRpcError` (a `grpc.RpcError`) is built when first asked for. Each check
runs in a fresh interpreter, because this one has imported everything."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("grpc", "google.protobuf", "envoy", "opentelemetry.sdk", "cryptography", "jwt")


def _loaded_after(code: str) -> list[str]:
    probe = (
        f"import sys\n{code}\n"
        "import json\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted({h for h in heavy for m in sys.modules"
        " if m == h or m.startswith(h + '.')})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_loads_no_grpc_protobuf_sdk_or_cryptography() -> None:
    assert _loaded_after("import proxyless_mesh") == []


def test_errors_load_without_grpc() -> None:
    code = "from proxyless_mesh import MeshError, NoRouteError, UpstreamTimeoutError"
    assert _loaded_after(code) == []


def test_mesh_rpc_error_is_still_a_grpc_error_when_used() -> None:
    code = (
        "import grpc\nfrom proxyless_mesh import MeshRpcError, MeshError\n"
        "e = MeshRpcError(grpc.StatusCode.UNAVAILABLE, 'down', 'UF')\n"
        "assert isinstance(e, grpc.RpcError) and isinstance(e, grpc.Call)\n"
        "assert isinstance(e, MeshError) and e.code() is grpc.StatusCode.UNAVAILABLE\n"
        "assert MeshRpcError.__module__ == 'proxyless_mesh.errors'\n"
        "from proxyless_mesh.errors import MeshRpcError as again\nassert again is MeshRpcError"
    )
    assert "grpc" in _loaded_after(code)


def test_unknown_name_is_an_attribute_error() -> None:
    code = (
        "import proxyless_mesh\n"
        "try:\n    proxyless_mesh.NoSuchThing\nexcept AttributeError:\n    pass\n"
        "else:\n    raise SystemExit('no AttributeError')"
    )
    assert _loaded_after(code) == []


def test_mesh_and_its_xds_client_load_no_grpc_or_cryptography() -> None:
    """What a meshed httpx-only process imports to start (issue 25): the ADS and
    CA calls go over h2, keys are made only with a CA, and the xDS client
    loads no protobuf either (tests/integration/test_meshed_process_imports.py
    runs a whole meshed process)."""
    code = (
        "from proxyless_mesh import Mesh\n"
        "from proxyless_mesh.xds_client import XdsClient\n"
        "from proxyless_mesh.integrations import MeshTransport\n"
    )
    loaded = _loaded_after(code)
    assert loaded == [], loaded  # no grpc, cryptography, protobuf, Envoy modules, SDK or PyJWT
