"""A real Prometheus (Debian's `prometheus` package) on 127.0.0.1, for the demo
and the tests: it binds port 0, and the address it got is read from its log.

Scrape jobs may change while it runs (`set_jobs`: the config is rewritten and
Prometheus told to reload it with SIGHUP), so a job can be added for a process
that needs Prometheus' URL before it starts (the control plane's console).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

LISTENING = re.compile(r'msg="Listening on" address=(127\.0\.0\.1:\d+)')
NOT_INSTALLED = "prometheus is not installed: run `make tools` (apt-get install prometheus)"


class PrometheusError(RuntimeError):
    """Prometheus is not installed, did not start, or exited."""


class PrometheusServer:
    """One Prometheus scraping `jobs` ({job name: ["HOST:PORT", ...]}), each
    on /metrics unless `paths` names another path for its job (an Envoy
    sidecar's and the mesh admin port's: /stats/prometheus)."""

    def __init__(
        self, workdir: Path, scrape_interval: str = "250ms", paths: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.scrape_interval = scrape_interval
        self.paths = dict(paths or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, jobs: dict[str, list[str]]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusError(NOT_INSTALLED)
        config = self._write_config(jobs)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                    "--web.listen-address=127.0.0.1:0",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.address = self._listening_address()

    def set_jobs(self, jobs: dict[str, list[str]]) -> None:
        """Scrape these jobs from now on (SIGHUP makes Prometheus reread its config)."""
        self._write_config(jobs)
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def _write_config(self, jobs: dict[str, list[str]]) -> Path:
        config = self.workdir / "prometheus.yml"
        scrape = [
            {
                "job_name": name,
                "metrics_path": self.paths.get(name, "/metrics"),
                "static_configs": [{"targets": targets}],
            }
            for name, targets in jobs.items()
        ]
        tmp = config.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {"global": {"scrape_interval": self.scrape_interval}, "scrape_configs": scrape}
            )
        )
        tmp.replace(config)
        return config

    def _listening_address(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := LISTENING.search(self.log_path.read_text(errors="replace")):
                return found.group(1)
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise PrometheusError(
            f"prometheus reported no listening address: {self.log_path.read_text()[-3000:]}"
        )

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": promql})
        answer.raise_for_status()
        return list(answer.json()["data"]["result"])

    def wait_for_value(self, promql: str, expected: float, timeout: float = 30.0) -> list[Any]:
        """Poll the HTTP API until the query returns `expected` (Prometheus
        has no push notification; scrapes come every scrape_interval)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.query(promql)
            except httpx.HTTPError as exc:  # not listening yet
                last = exc
            else:
                if last and float(last[0]["value"][1]) == expected:
                    return last
            if self.proc is not None and self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{promql} never returned {expected}; last answer: {last}")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
