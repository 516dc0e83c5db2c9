"""The import graph of the library and the control plane, read with `ast`
(issue 18): no cycle between packages, no import against the declared
direction, no protobuf below the integrations, no import of another
package's private module. Imports under `if TYPE_CHECKING:` and inside
functions count: they are dependencies all the same.

A package is a subpackage (`proxyless_mesh.routing`) or a top-level module
of the control plane (`mesh_control_plane.app`); the library's top-level
modules (`mesh`, `registration`, ...) are its composition root, one package,
except `errors`, `native_core` and `bootstrap`, which have layers of their own. There is
no list of exceptions: the last allowed edges (the serving helpers'
imports of Mesh, bootstrap -> security, the CA wire's protobuf) went with
the inbound seam (`runtime.InboundRuntime`), the bootstrap's own
`file_watcher_provider` and the `ca_wire` package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {
    "proxyless_mesh": ROOT / "src" / "proxyless_mesh",
    "mesh_control_plane": ROOT / "control_plane" / "src" / "mesh_control_plane",
}

# The library's layers, lowest first: a package may import its own layer
# (without a cycle) and the layers below it. The composition root (Mesh and
# what starts it) is everything not listed, above the integrations.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("model", "errors", "native_core"),
    ("bootstrap", "grpc_wire"),
    (
        "routing",
        "balancer",
        "resilience",
        "policy",
        "security",
        "telemetry",
        "xds_client",
        "ca_wire",
    ),
    ("runtime",),
    ("integrations",),
)
# Below the integrations only the wire codecs of the control plane's two gRPC
# services speak protobuf: the xDS client and the CA's messages (ca_wire).
PROTOBUF = ("envoy", "google.protobuf", "xds", "udpa", "validate")
PROTOBUF_ALLOWED = {"proxyless_mesh.xds_client", "proxyless_mesh.ca_wire"}


def _module_name(top: str, path: Path) -> str:
    parts = [top, *path.relative_to(SOURCES[top]).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    """`proxyless_mesh.routing._table` -> `proxyless_mesh.routing`. The
    library's top-level modules are one package, its composition root
    (`proxyless_mesh`), except those that have a layer of their own."""
    parts = module.split(".")
    if len(parts) == 1:
        return module
    if (SOURCES[parts[0]] / parts[1]).is_dir():
        return ".".join(parts[:2])
    if parts[0] == "proxyless_mesh" and not any(parts[1] in layer for layer in LAYERS):
        return parts[0]
    return ".".join(parts[:2])


def _resolve(importer: str, is_init: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_init else base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _is_module(name: str) -> bool:
    parts = name.split(".")
    if parts[0] not in SOURCES:
        return False
    path = SOURCES[parts[0]].joinpath(*parts[1:])
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports() -> list[tuple[str, str]]:
    """(importer, imported module) for every import in both trees; `from a
    import b` counts as importing `a.b` when b is a module, else `a`."""
    edges = []
    for top, root in SOURCES.items():
        for path in sorted(root.rglob("*.py")):
            importer = _module_name(top, path)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    edges += [(importer, alias.name) for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    target = _resolve(importer, path.name == "__init__.py", node)
                    subs = [f"{target}.{a.name}" for a in node.names]
                    modules = [s for s in subs if _is_module(s)]
                    edges += [(importer, m) for m in modules] or [(importer, target)]
    return edges


EDGES = _imports()


def _private_of_other_package(importer: str, imported: str) -> bool:
    if imported.split(".")[0] not in SOURCES:
        return False
    if not any(p.startswith("_") and not p.startswith("__") for p in imported.split(".")):
        return False
    return _package(importer) != _package(imported)


def _layer(package: str) -> int:
    name = package.split(".", 1)[1] if "." in package else package
    for rank, names in enumerate(LAYERS):
        if name in names:
            return rank
    return len(LAYERS)  # the composition root


def test_no_import_of_another_packages_private_module() -> None:
    bad = sorted(f"{a} -> {b}" for a, b in EDGES if _private_of_other_package(a, b))
    assert bad == []


def test_library_imports_follow_the_layers() -> None:
    bad = []
    for importer, imported in EDGES:
        if not (importer.startswith("proxyless_mesh") and imported.startswith("proxyless_mesh.")):
            continue
        source, target = _package(importer), _package(imported)
        if source != target and _layer(target) > _layer(source):
            bad.append(f"{importer} -> {imported}")
    assert sorted(bad) == []


def test_nothing_below_the_integrations_imports_protobuf() -> None:
    integrations = LAYERS.index(("integrations",))
    bad = [
        f"{importer} -> {imported}"
        for importer, imported in EDGES
        if importer.startswith("proxyless_mesh.")
        and _layer(_package(importer)) < integrations
        and _package(importer) not in PROTOBUF_ALLOWED
        and any(imported == p or imported.startswith(p + ".") for p in PROTOBUF)
    ]
    assert sorted(bad) == []


@pytest.mark.parametrize("top", sorted(SOURCES))
def test_no_cycle_between_packages(top: str) -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for importer, imported in EDGES:
        if not (importer.startswith(top) and imported.startswith(top + ".")):
            continue
        source, target = _package(importer), _package(imported)
        if source != target:
            graph[source].add(target)
    cycles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_the_library_imports_without_the_optional_servers() -> None:
    """uvicorn and gunicorn are extras: `proxyless_mesh` and its integrations
    package must not import them (only serving.py and gunicorn.py do)."""
    code = (
        "import sys, proxyless_mesh, proxyless_mesh.integrations, proxyless_mesh.runtime\n"
        "print(sorted(m for m in ('uvicorn', 'gunicorn') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
    code = "import sys, proxyless_mesh.serving\nprint('uvicorn' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "True"  # the check above can see an import
