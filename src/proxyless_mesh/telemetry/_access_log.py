"""Access logs: one JSON line per request, with Envoy's field meanings.

Lines go to a `logging` logger (`proxyless_mesh.access` by default) at INFO,
so the application decides where they land (stdout, a file, a collector)
with ordinary logging configuration. Sizes follow Envoy's downstream view:
`bytes_received` is the request body, `bytes_sent` the response body.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any


class AccessLog:
    """Writes prepared records to one logger."""

    def __init__(self, logger_name: str) -> None:
        self.logger = logging.getLogger(logger_name)

    def write(self, record: dict[str, Any]) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info(json.dumps(record, separators=(",", ":")))


def iso_time(epoch_ns: int) -> str:
    """Envoy's %START_TIME% default shape: UTC, milliseconds, `Z`."""
    seconds, ns = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1_000_000:03d}Z"
