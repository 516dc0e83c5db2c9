"""`meshctl simulate --admin-address` (issue 17): the same decision as
`--config-dir`, computed by a running control plane from the config and
registry it serves, so it follows a live change without reading any files."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
from mesh_control_plane.cli.admin_client import AdminError, get_json
from meshlab import BIN, LocalMesh, service_entry, subsets_rule
from test_diagnostics_simulate import BASE, HOST, ROUTES, TABLE


def _meshctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "meshctl"), *args], capture_output=True, text=True, timeout=30, check=False
    )


def _simulate(where: list[str], method: str, path: str, headers: dict[str, str]) -> Any:
    flags = [f for k, v in headers.items() for f in ("--header", f"{k}={v}")]
    done = _meshctl("simulate", method, BASE + path, *flags, *where, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_simulate_against_the_running_control_plane(lab: LocalMesh) -> None:
    instances = [("127.0.0.1", 9001, {"version": "v1"}), ("127.0.0.1", 9002, {"version": "v2"})]
    lab.write_config(
        "reviews.yaml",
        service_entry(HOST, 8080, instances) + "\n---\n" + subsets_rule(HOST, ["v1", "v2"]),
    )
    lab.write_config("route.yaml", json.dumps(ROUTES))
    lab.start_control_plane()
    live = ["--admin-address", lab.admin_address]
    offline = ["--config-dir", str(lab.config_dir)]
    for method, path, headers, route in TABLE:
        answer = _simulate(live, method, path, headers)
        assert answer["route"] == route
        assert answer == _simulate(offline, method, path, headers)

    text = _meshctl("simulate", "GET", BASE + "/reviews", "--header", "x-canary=yes", *live)
    assert text.returncode == 0 and "route:     default/reviews/canary" in text.stdout

    # A live change: the split goes 100 % to v2; the running control plane follows it.
    split = json.loads(json.dumps(ROUTES))
    split["spec"]["http"][2]["route"][0]["weight"] = 0
    split["spec"]["http"][2]["route"][1]["weight"] = 100
    lab.write_config("route.yaml", json.dumps(split))
    deadline = time.monotonic() + 10
    while True:
        answer = _simulate(live, "GET", "/reviews", {})
        if [c["percent"] for c in answer["clusters"]] == [100.0]:
            break
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)
    assert answer["clusters"][0]["name"].startswith("outbound|8080|v2|")


def test_simulate_admin_errors_are_clear(lab: LocalMesh) -> None:
    lab.start_control_plane()
    with pytest.raises(AdminError, match="400: 'say which request"):
        get_json(lab.admin_address, "/simulate?method=GET")
    with pytest.raises(AdminError, match="400: 'headers must be a JSON list"):
        get_json(lab.admin_address, "/simulate?url=http://a.mesh:80/&headers=x")
    done = _meshctl("simulate", "GET", BASE + "/", "--admin-address", "127.0.0.1:1")
    assert done.returncode == 1 and "cannot read 127.0.0.1:1" in done.stderr
