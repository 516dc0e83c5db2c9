"""Every row of the inbound decision table on every server stack, over real sockets.

Stacks (`inbound_stacks.py`): the library's uvicorn protocols (h11 and
httptools, PeerAuthentication DISABLE) with the ASGI middleware, gunicorn's
sync worker with the WSGI middleware, grpcio sync and aio servers with the
authorization interceptors, each given the PolicySet directly; and the
stacks as shipped, following a real control plane: `serve_asgi` (h11 and
httptools) and gunicorn's `MeshSyncWorker`, on ports no ServiceEntry
declares (the workload's inbound passthrough, selected by its labels). Each
stack serves every policy group once for the module. HTTP rows are written
byte for byte on a raw socket; gRPC rows are calls whose `:path` is the row's
target. An app that is reached echoes the method, Host and path it was
handed: for a 200 row they must be what the policy judged. A last test checks
that the stacks agree on every row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from inbound_stacks import (
    XDS_GROUPS,
    Outcome,
    control_plane,
    grpc_aio_stack,
    grpc_sync_stack,
    gunicorn_stack,
    mesh_sync_worker_stack,
    serve_asgi_stack,
    target_of,
    uvicorn_stack,
)
from inbound_table import POLICIES, ROWS, Row

XDS_STACKS = ["serve_asgi-h11", "serve_asgi-httptools", "gunicorn-MeshSyncWorker"]
HTTP_STACKS = ["uvicorn-h11", "uvicorn-httptools", "gunicorn-wsgi", *XDS_STACKS]
GRPC_STACKS = ["grpc-sync", "grpc-aio"]
WSGI_STACKS = {"gunicorn-wsgi", "gunicorn-MeshSyncWorker"}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Outcome]]:
    """Every applicable row on every stack, each stack started once."""
    cp_dir = tmp_path_factory.mktemp("control-plane")
    with control_plane(cp_dir) as lab:
        starters: dict[str, Callable[[], Iterator[Any]]] = {
            "uvicorn-h11": lambda: uvicorn_stack("h11"),
            "uvicorn-httptools": lambda: uvicorn_stack("httptools"),
            "gunicorn-wsgi": lambda: gunicorn_stack(tmp_path_factory.mktemp("gunicorn")),
            "grpc-sync": grpc_sync_stack,
            "grpc-aio": grpc_aio_stack,
            "serve_asgi-h11": lambda: serve_asgi_stack(lab, "h11"),
            "serve_asgi-httptools": lambda: serve_asgi_stack(lab, "httptools"),
            "gunicorn-MeshSyncWorker": lambda: mesh_sync_worker_stack(lab),
        }
        results: dict[str, dict[str, Outcome]] = {}
        for name, start in starters.items():
            results[name] = _run(name, start)
    return results


def _applies(row: Row, stack: str) -> bool:
    if stack in GRPC_STACKS:
        return row.grpc is True
    return stack not in XDS_STACKS or row.policy in XDS_GROUPS


def _run(name: str, start: Callable[[], Iterator[Any]]) -> dict[str, Outcome]:
    running = start()
    stack = next(running)
    try:
        return {row.id: stack.send(row) for row in ROWS if _applies(row, name)}
    finally:
        running.close()


def test_table_is_large_and_sourced() -> None:
    assert len(ROWS) >= 60
    assert len({r.id for r in ROWS}) == len(ROWS)
    assert all(r.source and r.policy in POLICIES for r in ROWS)
    assert sum(r.grpc is True for r in ROWS) >= 20
    assert all(r.stricter for r in ROWS if r.grpc_status is not None)  # said, not silent


@pytest.mark.parametrize("stack", HTTP_STACKS + GRPC_STACKS)
def test_every_row_on_stack(outcomes: dict[str, dict[str, Outcome]], stack: str) -> None:
    wrong = []
    for row in ROWS:
        if row.id not in outcomes[stack]:
            continue
        status, seen = outcomes[stack][row.id]
        expected = _expected(row, stack)
        if status != expected:
            wrong.append(f"{row.id}: {status}, expected {expected}")
        elif status == 200 and stack in GRPC_STACKS and seen["path"] != target_of(row):
            wrong.append(f"{row.id}: the handler of {seen['path']!r} ran")
        elif status == 200 and stack in GRPC_STACKS:
            continue
        elif status == 200 and row.path is not None and seen.get("path") != row.path:
            wrong.append(f"{row.id}: the app was handed path {seen.get('path')!r}")
        elif status == 200 and stack in HTTP_STACKS and seen.get("host") != row.host:
            wrong.append(f"{row.id}: the app was handed Host {seen.get('host')!r}")
        elif status == 200 and seen.get("method") != row.request.split(b" ", 1)[0].decode():
            wrong.append(f"{row.id}: the app was handed method {seen.get('method')!r}")
    assert not wrong, "\n".join(wrong)


def _expected(row: Row, stack: str) -> int:
    if stack in GRPC_STACKS and row.grpc_status is not None:
        return row.grpc_status
    return row.status


def test_stacks_agree_on_every_row(outcomes: dict[str, dict[str, Outcome]]) -> None:
    """Every stack answers a row alike (gRPC only otherwise where the row says
    so, `grpc_status`), and hands its app the same path."""
    disagreements = []
    for row in ROWS:
        seen = {name: results[row.id] for name, results in outcomes.items() if row.id in results}
        statuses = {name: status for name, (status, _) in seen.items()}
        if row.grpc_status is not None:  # compared within each kind of stack
            statuses = {n: s for n, s in statuses.items() if n in HTTP_STACKS}
            grpc_statuses = {n: s for n, s in seen.items() if n in GRPC_STACKS}
            if len({s for s, _ in grpc_statuses.values()}) != 1:
                disagreements.append(f"{row.id}: gRPC {grpc_statuses}")
        if len(set(statuses.values())) != 1:
            disagreements.append(f"{row.id}: {statuses}")
        paths = {
            name: _as_asgi(name, echo["path"])
            for name, (_, echo) in seen.items()
            if echo and name in HTTP_STACKS
        }
        if len(set(paths.values())) > 1:
            disagreements.append(f"{row.id}: app paths {paths}")
    assert not disagreements, "\n".join(disagreements)


def _as_asgi(stack: str, path: str) -> str:
    """WSGI hands bytes as latin-1 characters (PEP 3333), ASGI as UTF-8 with
    replacement: compare paths in ASGI's terms."""
    if stack in WSGI_STACKS:
        return path.encode("latin-1").decode("utf-8", "replace")
    return path


def test_lower_case_delete_never_reaches_the_app(outcomes: dict[str, dict[str, Outcome]]) -> None:
    for stack in HTTP_STACKS:
        for row_id in ("method-lower-delete", "method-mixed-delete"):
            assert outcomes[stack][row_id] == (400, {}), (stack, row_id)
        assert outcomes[stack]["method-upper-delete"][0] == 403, stack
