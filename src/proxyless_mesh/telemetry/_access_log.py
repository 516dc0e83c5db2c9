"""Access logs: one line per request in Istio's text format or its JSON
keys (see _istio_access_log), with Envoy's field meanings.

Lines go to a `logging` logger (`proxyless_mesh.access` by default) at INFO,
so the application decides where they land (a file, a collector) with
ordinary logging configuration, or straight to standard output as Istio's
proxies write them (`access_log_stdout=True`). Sizes follow Envoy's
downstream view: `bytes_received` is the request body, `bytes_sent` the
response body.
"""

from __future__ import annotations

import logging
import sys

from proxyless_mesh.telemetry._istio_access_log import Value, render_json, render_text


class AccessLog:
    """Renders operator values in one format and writes them to one place."""

    def __init__(self, logger_name: str, log_format: str = "text", stdout: bool = False) -> None:
        self.logger = logging.getLogger(logger_name)
        self._render = render_json if log_format == "json" else render_text
        self._stdout = stdout

    def write(self, values: dict[str, Value]) -> None:
        if self._stdout:
            sys.stdout.write(self._render(values) + "\n")
        elif self.logger.isEnabledFor(logging.INFO):
            self.logger.info(self._render(values))
