"""`make demo` as the user runs it (`examples/demo.py`, here with `--screenshot`):
security by default - every edge of the console's graph is mutual TLS - and
the canary summary as before. Needs Debian's prometheus and chromium (`make tools`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EDGES = {
    "wl:default/demo-client -> svc:reviews.default.mesh",
    "wl:default/demo-client -> svc:ratings.default.mesh",
    "svc:reviews.default.mesh -> wl:default/reviews-v1",
    "svc:reviews.default.mesh -> wl:default/reviews-v2",
    "svc:ratings.default.mesh -> wl:default/ratings-v1",
}


def test_demo_runs_mutual_tls_and_shows_the_locks(tmp_path: Path) -> None:
    png = tmp_path / "console.png"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--screenshot", str(png)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # every workload holds its CA-issued identity
    for sa in ("reviews", "ratings", "demo-client"):
        assert f"spiffe://cluster.local/ns/default/sa/{sa}" in out, out
    # the canary summary: v2's share grows to all of the last phase's 400
    rows = dict(re.findall(r"^(90/10|50/50|0/100)\s+(\d+\s+\d+)", out, re.MULTILINE))
    assert set(rows) == {"90/10", "50/50", "0/100"}, out
    assert rows["0/100"].split() == ["0", "400"], out
    shares = dict(re.findall(r"^  (\S+ -> \S+): (\d+)%$", out, re.MULTILINE))
    assert shares == dict.fromkeys(EDGES, "100"), out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
