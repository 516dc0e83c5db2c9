"""The control plane's own metrics, in the Prometheus text format (0.0.4).

A handful of counters, gauges and histograms do not need a client library:
they are written here by hand, and the admin endpoint serves `render()` at
`GET /metrics`. Everything runs on the control plane's event loop, so no
locks. What is measured:

- `meshcp_xds_clients{kind}`: connected ADS streams by client kind (gauge,
  computed at scrape time from the server's records);
- `meshcp_xds_pushes_total{type}`: DiscoveryResponses sent, by LDS/RDS/CDS/EDS;
- `meshcp_xds_push_duration_seconds`: time to compute and queue the pushes
  of one config change to every stream (histogram);
- `meshcp_convergence_seconds` (histogram) and `meshcp_last_convergence_seconds`
  (gauge): from a config change to the moment every client that was pushed
  something has ACKed it. A client that NACKs or disconnects leaves the
  round, which then counts in `meshcp_convergence_incomplete_total` instead;
- `meshcp_xds_nacks_total{type}`: NACKs received, by type;
- `meshcp_config_errors` (gauge, problems in the current directory),
  `meshcp_config_rejected_total` (reloads refused), `meshcp_config_version`.

With ADS worker processes (`--xds-workers`) each worker counts its own streams
and the leader's page adds them up (`export` / `merged`).
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CONTENT_TYPE", "ControlPlaneMetrics", "Histogram", "escape_label"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: config pushes and convergence on a LAN are milliseconds; the
# upper buckets catch a slow client or a large mesh.
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def escape_label(value: str) -> str:
    """A label value as the text format wants it (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs)
    return f"{{{inner}}}" if inner else ""


@dataclass
class Histogram:
    """Cumulative buckets, sum and count, as Prometheus histograms are."""

    buckets: Sequence[float] = DEFAULT_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = []
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            running += n
            out.append(f'{name}_bucket{{le="{_number(bound)}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {_number(self.total)}")
        out.append(f"{name}_count {self.count}")
        return out

    def export(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "total": self.total, "count": self.count}

    def add(self, exported: Mapping[str, Any]) -> None:
        """Add another histogram's `export()` (same buckets: both are ours)."""
        self.counts = [a + b for a, b in zip(self.counts, exported["counts"], strict=True)]
        self.total += exported["total"]
        self.count += exported["count"]


@dataclass
class _Round:
    """One convergence round: when it started and who has yet to ACK."""

    started: float
    pending: set[tuple[Hashable, str]]
    broken: bool = False
    type_urls: set[str] = field(default_factory=set)
    """Every type URL ever pending in this round: a closing stream is looked
    up by these few keys, not by a scan of every pending item (thousands of
    streams closing at once would otherwise cost quadratic time)."""


class ControlPlaneMetrics:
    """The counters the ADS server and the control plane update, and render()."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.pushes: Counter[str] = Counter()
        self.nacks: Counter[str] = Counter()
        self.push_duration = Histogram()
        self.convergence = Histogram()
        self.last_convergence: float | None = None
        self.incomplete_rounds = 0
        self.rejected_reloads = 0
        self._round: _Round | None = None

    # -- what the ADS server reports -----------------------------------------------

    def now(self) -> float:
        return self._clock()

    def pushed(self, type_name: str) -> None:
        """One DiscoveryResponse of `type_name` (LDS/RDS/...) was queued."""
        self.pushes[type_name] += 1

    def config_pushed(self, started: float, pending: Iterable[tuple[Hashable, str]]) -> None:
        """A config change (seen at `started`, from `now()`) was pushed: each
        (stream, type URL) in `pending` must ACK before the round converges.
        A change that arrives while a round is open joins it and the round
        keeps its start: convergence is measured from the first change not
        yet everywhere."""
        self.push_duration.observe(self._clock() - started)
        items = set(pending)
        if self._round is None:
            if not items:
                return
            self._round = _Round(started, items)
        else:
            self._round.pending |= items
        self._round.type_urls.update(type_url for _, type_url in items)
        self._maybe_converged()

    def acked(self, stream: Hashable, type_url: str) -> None:
        """`stream` ACKed the latest response of `type_url` it was sent."""
        if self._round is not None:
            self._round.pending.discard((stream, type_url))
            self._maybe_converged()

    def nacked(self, stream: Hashable, type_url: str, type_name: str) -> None:
        self.nacks[type_name] += 1
        self._leave(stream, type_url)

    def stream_closed(self, stream: Hashable) -> None:
        """A stream ended: it no longer holds a round open."""
        if self._round is not None:
            for type_url in list(self._round.type_urls):
                self._leave(stream, type_url)

    def config_rejected(self) -> None:
        self.rejected_reloads += 1

    def _leave(self, stream: Hashable, type_url: str) -> None:
        if self._round is not None and (stream, type_url) in self._round.pending:
            self._round.pending.discard((stream, type_url))
            self._round.broken = True
            self._maybe_converged()

    def _maybe_converged(self) -> None:
        current = self._round
        if current is None or current.pending:
            return
        self._round = None
        if current.broken:
            self.incomplete_rounds += 1
            return
        seconds = self._clock() - current.started
        self.convergence.observe(seconds)
        self.last_convergence = seconds

    # -- ADS worker processes ----------------------------------------------------

    def export(self) -> dict[str, Any]:
        """What an ADS worker reports to its leader (JSON), for `merged`."""
        return {
            "pushes": dict(self.pushes),
            "nacks": dict(self.nacks),
            "push_duration": self.push_duration.export(),
            "convergence": self.convergence.export(),
            "last_convergence": self.last_convergence,
            "incomplete_rounds": self.incomplete_rounds,
        }

    def merged(self, workers: Iterable[Mapping[str, Any]]) -> ControlPlaneMetrics:
        """These metrics plus the workers' (`export()`), for one page: counters
        and histograms add up. Each worker times convergence over its own
        streams, so the last convergence is the slowest worker's."""
        total = ControlPlaneMetrics(self._clock)
        total.pushes, total.nacks = Counter(self.pushes), Counter(self.nacks)
        total.push_duration.add(self.push_duration.export())
        total.convergence.add(self.convergence.export())
        total.last_convergence = self.last_convergence
        total.incomplete_rounds = self.incomplete_rounds
        total.rejected_reloads = self.rejected_reloads
        for worker in workers:
            total.pushes.update(worker["pushes"])
            total.nacks.update(worker["nacks"])
            total.push_duration.add(worker["push_duration"])
            total.convergence.add(worker["convergence"])
            total.incomplete_rounds += worker["incomplete_rounds"]
            last = worker["last_convergence"]
            if last is not None:
                total.last_convergence = max(last, total.last_convergence or 0.0)
        return total

    # -- exposition --------------------------------------------------------------

    def render(
        self, *, clients_by_kind: Mapping[str, int], config_errors: int, version: str
    ) -> str:
        """The whole `/metrics` page; values computed elsewhere come as arguments."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str, lines: Iterable[str]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)

        family(
            "meshcp_xds_clients",
            "gauge",
            "Connected ADS streams by client kind.",
            (
                f"meshcp_xds_clients{_labels([('kind', k)])} {n}"
                for k, n in sorted(clients_by_kind.items())
            ),
        )
        family(
            "meshcp_xds_pushes_total",
            "counter",
            "DiscoveryResponses sent, by type.",
            (
                f"meshcp_xds_pushes_total{_labels([('type', t)])} {n}"
                for t, n in sorted(self.pushes.items())
            ),
        )
        family(
            "meshcp_xds_nacks_total",
            "counter",
            "NACKs received from clients, by type.",
            (
                f"meshcp_xds_nacks_total{_labels([('type', t)])} {n}"
                for t, n in sorted(self.nacks.items())
            ),
        )
        family(
            "meshcp_xds_push_duration_seconds",
            "histogram",
            "Time to compute and queue the pushes of one config change.",
            self.push_duration.lines("meshcp_xds_push_duration_seconds"),
        )
        family(
            "meshcp_convergence_seconds",
            "histogram",
            "From a config change to its ACK by every client it was pushed to.",
            self.convergence.lines("meshcp_convergence_seconds"),
        )
        if self.last_convergence is not None:
            family(
                "meshcp_last_convergence_seconds",
                "gauge",
                "Convergence time of the last round that completed.",
                [f"meshcp_last_convergence_seconds {_number(self.last_convergence)}"],
            )
        family(
            "meshcp_convergence_incomplete_total",
            "counter",
            "Rounds that ended with a NACK or a disconnect instead of every ACK.",
            [f"meshcp_convergence_incomplete_total {self.incomplete_rounds}"],
        )
        family(
            "meshcp_config_errors",
            "gauge",
            "Problems in the config directory now (the last good config is served).",
            [f"meshcp_config_errors {config_errors}"],
        )
        family(
            "meshcp_config_rejected_total",
            "counter",
            "Config loads refused (invalid or inconsistent).",
            [f"meshcp_config_rejected_total {self.rejected_reloads}"],
        )
        family(
            "meshcp_config_version",
            "gauge",
            "The config version served (bumped by each accepted change).",
            [f"meshcp_config_version {_number(float(version)) if version.isdigit() else 0}"],
        )
        return "\n".join(out) + "\n"
