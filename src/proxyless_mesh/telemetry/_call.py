"""`Call` (one request) and `QuietCall`, made by `Telemetry` (_telemetry.py).

Integrations create a Call when a request starts and feed it facts as they
happen (routed, each attempt, the outcome); at `finish()` it ends the spans,
records the metrics and writes the access line, once. Every hook contains
its own failures: telemetry must never break a request, so an exception from
an exporter, a propagator or a hook is swallowed, counted in
`Telemetry.errors` and logged at DEBUG.

Span shape (as Envoy with the router's `start_child_span`): an outbound call
is one CLIENT span; each try (the first and every retry) is a CLIENT child
span, and the trace context sent to the upstream is the try's, so the
server's span hangs under the try that reached it. Spans are named as Envoy
names them (`<host>:<port>/*`), with Istio's tags beside OpenTelemetry's.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context, get_current
from opentelemetry.trace import SpanKind, Status, StatusCode

from proxyless_mesh.telemetry._istio_access_log import operators
from proxyless_mesh.telemetry._istio_tags import end_tags, span_name, start_tags
from proxyless_mesh.telemetry._labels import (
    GRPC_PEER_HEADER,
    NO_PEER,
    PEER_HEADER,
    UNKNOWN,
    endpoint_peer,
    parse_peer,
)

if TYPE_CHECKING:
    from proxyless_mesh.telemetry._policy import SidePolicy
    from proxyless_mesh.telemetry._telemetry import Telemetry

log = logging.getLogger("proxyless_mesh.telemetry")
SetHeader = Callable[[str, str], None]
#: Sets several headers at once (each replacing one of its name), when the
#: integration has a cheaper way than one `SetHeader` call per header.
AddHeaders = Callable[[tuple[tuple[str, str], ...]], None]
GetHeader = Callable[[str], "str | None"]

#: The status Envoy's local reply carries for a flag, reported (as a sidecar
#: would have answered) when the library raised instead of responding.
LOCAL_REPLY_STATUS = {"NR": 404, "UT": 504, "NC": 503, "UH": 503, "UO": 503}
_SECURE = "mutual_tls"


def _contained(telemetry: Telemetry, exc: BaseException) -> None:
    """A telemetry hook failed: count and log it, the request goes on."""
    telemetry.errors += 1
    log.debug("telemetry hook failed (request unaffected)", exc_info=exc)


class QuietCall:
    """An outbound request nothing records: the caller's trace context and
    the peer header still go out on each try, as Call does when quiet. One
    instance per Telemetry, shared: it holds no per-request state."""

    __slots__ = ("done", "telemetry")

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self.done = True  # nothing to finish (responded() and passthrough())

    def routed(self, route_name: str, cluster: str, secure: bool, principal: str) -> None:
        return

    def attempt_start(
        self,
        attempt: int,
        host: str,
        port: int,
        set_header: SetHeader,
        workload: str = "",
        add_headers: AddHeaders | None = None,
    ) -> None:
        telemetry = self.telemetry
        try:
            if telemetry.tracer is not None:
                context = get_current()
                if context:  # an empty one (no span, no baggage) has nothing to propagate
                    telemetry.inject(context, set_header)
            if telemetry.exchange_peers:
                if add_headers is not None:
                    add_headers(telemetry.peer_headers)
                else:
                    for name, value in telemetry.peer_headers:
                        set_header(name, value)
        except Exception as exc:  # telemetry never breaks a request
            _contained(telemetry, exc)

    def attempt_end(self, status: int | None, failure: str | None) -> None:
        return

    def finish(
        self,
        status: int,
        flags: tuple[str, ...] = (),
        *,
        grpc_status: int | None = None,
        error: str | None = None,
    ) -> None:
        return


class Call:
    """One request as telemetry sees it (either reporter)."""

    __slots__ = (
        "_attempt_span",
        "_quiet",
        "_t0",
        "attempts",
        "authority",
        "cluster",
        "done",
        "grpc_status",
        "http_version",
        "log_extra",
        "logged",
        "measured",
        "method",
        "path",
        "peer_principal",
        "peer_workload",
        "protocol",
        "reporter",
        "request_bytes",
        "request_header",
        "request_id",
        "request_messages",
        "response_bytes",
        "response_messages",
        "route_name",
        "secure",
        "service",
        "span",
        "start_ns",
        "status",
        "telemetry",
        "upstream_host",
    )

    def __init__(
        self,
        telemetry: Telemetry,
        reporter: str,
        protocol: str,
        method: str,
        authority: str,
        path: str,
        logged: bool,
        measured: bool = True,
    ) -> None:
        self.telemetry = telemetry
        self.reporter = reporter
        self.protocol = protocol
        self.method = method
        self.authority = authority
        self.path = path
        self.logged = logged
        #: Istio's request metrics will be recorded (they are on).
        self.measured = measured
        self.start_ns = time.time_ns()
        self._t0 = time.perf_counter()
        self.span: trace.Span | None = None
        self._attempt_span: trace.Span | None = None
        #: No provider records: no spans of ours, the caller's context is
        #: still propagated (what the API's no-op tracer amounts to).
        self._quiet = False
        self.attempts = 0
        self.route_name = ""
        self.cluster = ""
        self.upstream_host = ""
        self.secure = False
        self.peer_principal = UNKNOWN
        self.peer_workload = NO_PEER
        self.service = ""
        self.status = 0
        self.grpc_status: int | None = None
        self.request_bytes = 0
        self.response_bytes = 0
        #: gRPC messages each way (counted by the gRPC integrations)
        self.request_messages = 0
        self.response_messages = 0
        self.request_id = ""
        self.http_version = ""
        #: Access-log operator values only an integration knows (user agent,
        #: socket addresses), set when `logged`.
        self.log_extra: dict[str, str] | None = None
        #: The request's headers, for the Telemetry API's header custom tags.
        self.request_header: GetHeader | None = None
        self.done = False

    @property
    def idle(self) -> bool:
        """Nothing is left to record: no span of ours, no metrics, no access
        line (the no-SDK default), so the response need not be metered."""
        if self.measured or self.logged:
            return False
        return self._quiet or self.telemetry.tracer is None

    # -- spans ------------------------------------------------------------------

    def _span_name(self) -> str:
        return span_name(self.authority)

    def _base_attributes(self, scheme: str = "http") -> dict[str, Any]:
        host, _, port = self.authority.rpartition(":")
        if self.protocol == "grpc":
            service, _, method = self.path.lstrip("/").partition("/")
            attributes: dict[str, Any] = {
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": method,
            }
        else:
            attributes = {"http.request.method": self.method, "url.path": self.path}
        attributes["server.address"] = host or self.authority
        if port.isdigit():
            attributes["server.port"] = int(port)
        attributes.update(start_tags(self, scheme))
        side = self.telemetry.policy.side(self.reporter)
        if side.tags:
            attributes.update(side.span_tags(self.request_header))
        return attributes

    def start_client_span(self) -> None:
        """Open the call span (under the current context), once."""
        tracer = self.telemetry.tracer
        if tracer is None or self.span is not None or self._quiet:
            return
        try:
            if not self.telemetry.gate.tracing() or not self.telemetry.traced("source", None):
                self._quiet = True  # the no-op tracer would hand back the current span
                return
            span = tracer.start_span(
                self._span_name(), kind=SpanKind.CLIENT, start_time=self.start_ns
            )
            if span.is_recording():
                span.set_attributes(self._base_attributes())
            self.span = span
        except Exception as exc:  # telemetry never breaks a request
            _contained(self.telemetry, exc)

    def start_server_span(self, get_header: GetHeader, scheme: str = "http") -> Context | None:
        """Open the server span under the caller's propagated context; the
        returned context is what the application should run in."""
        telemetry = self.telemetry
        try:
            peer = parse_peer(get_header(PEER_HEADER) or get_header(GRPC_PEER_HEADER))
            if peer is not None:
                self.peer_workload = peer
            self.request_id = get_header("x-request-id") or ""
            if telemetry.tracer is None:
                return None
            self.request_header = get_header
            parent = telemetry.extract(get_header)
            if not telemetry.gate.tracing() or not telemetry.traced(self.reporter, parent):
                # The no-op tracer's span is the caller's: run in its context.
                self._quiet = True
                return parent
            span = telemetry.tracer.start_span(
                self._span_name(), context=parent, kind=SpanKind.SERVER, start_time=self.start_ns
            )
            if span.is_recording():
                attributes = self._base_attributes(scheme)
                attributes["url.scheme"] = scheme
                span.set_attributes(attributes)
            self.span = span
            return trace.set_span_in_context(span, parent)
        except Exception as exc:  # telemetry never breaks a request
            _contained(telemetry, exc)
            return None

    # -- outbound facts ---------------------------------------------------------

    def routed(self, route_name: str, cluster: str, secure: bool, principal: str) -> None:
        self.route_name = route_name
        self.cluster = cluster
        self.secure = secure
        if principal:
            self.peer_principal = principal
        self.start_client_span()

    def attempt_start(
        self,
        attempt: int,
        host: str,
        port: int,
        set_header: SetHeader,
        workload: str = "",
        add_headers: AddHeaders | None = None,
    ) -> None:
        """A try is about to go to `host:port`: open its span and put the
        trace context (the try's), the peer header and x-request-id on it.
        `workload` is the endpoint's Istio telemetry metadata: the destination's
        name until (unless) the server answers with its own (Istio's fallback)."""
        telemetry = self.telemetry
        try:
            self.attempts = attempt
            self.upstream_host = f"{host}:{port}"
            self.peer_workload = endpoint_peer(workload)
            self._end_attempt(None, None)
            span = self.span
            tracer = telemetry.tracer
            if self._quiet:
                # Headers come from the context only: an empty one (no span,
                # no baggage) has nothing to propagate.
                context = get_current()
                if context:
                    telemetry.inject(context, set_header)
            elif tracer is not None and span is not None:
                parent = trace.set_span_in_context(span)
                child = tracer.start_span(self._span_name(), context=parent, kind=SpanKind.CLIENT)
                if child.is_recording():
                    attributes = self._base_attributes()
                    attributes["network.peer.address"] = host
                    attributes["network.peer.port"] = port
                    attributes["mesh.upstream_cluster"] = self.cluster
                    if attempt > 1:
                        attributes["http.request.resend_count"] = attempt - 1
                    child.set_attributes(attributes)
                self._attempt_span = child
                telemetry.inject(trace.set_span_in_context(child), set_header)
            if telemetry.exchange_peers:
                grpc = self.protocol == "grpc"
                peers = telemetry.grpc_peer_headers if grpc else telemetry.peer_headers
                if add_headers is not None:
                    add_headers(peers)
                else:
                    for name, value in peers:
                        set_header(name, value)
            if self.logged:
                if not self.request_id:
                    self.request_id = _request_id()
                set_header("x-request-id", self.request_id)
        except Exception as exc:  # telemetry never breaks a request
            _contained(telemetry, exc)

    def attempt_end(self, status: int | None, failure: str | None) -> None:
        try:
            self._end_attempt(status, failure)
        except Exception as exc:  # telemetry never breaks a request
            _contained(self.telemetry, exc)

    def _end_attempt(self, status: int | None, failure: str | None) -> None:
        span = self._attempt_span
        if span is None:
            return
        self._attempt_span = None
        if span.is_recording():
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            if failure is not None:
                span.set_attribute("error.type", failure)
                span.set_status(Status(StatusCode.ERROR, failure))
            elif status is not None and status >= 500:
                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def peer_from_response(self, get_header: GetHeader) -> None:
        try:
            peer = parse_peer(get_header(PEER_HEADER) or get_header(GRPC_PEER_HEADER))
            if peer is not None:
                self.peer_workload = peer
        except Exception as exc:  # telemetry never breaks a request
            _contained(self.telemetry, exc)

    # -- the end ----------------------------------------------------------------

    def finish(
        self,
        status: int,
        flags: tuple[str, ...] = (),
        *,
        grpc_status: int | None = None,
        error: str | None = None,
    ) -> None:
        """Record the outcome once: spans, metrics, access line."""
        if self.done:
            return
        self.done = True
        telemetry = self.telemetry
        try:
            self.status = status
            self.grpc_status = grpc_status
            duration_ms = (time.perf_counter() - self._t0) * 1000.0
            flag_text = ",".join(dict.fromkeys(flags)) if flags else "-"
            self._end_attempt(None, error)
            if self.span is None and self.reporter == "source":
                self.start_client_span()  # a request refused before routing (NR, NC)
            span = self.span
            if span is not None:
                self._end_span(span, flag_text, error)
            side = telemetry.policy.side(self.reporter)
            if self.measured:
                self._measure(telemetry, side, flag_text, duration_ms)
            access = telemetry.access if self.logged else None
            if access is not None and (
                side.log_filter is None or side.log_filter(status, duration_ms)
            ):
                access.write(operators(self, flag_text, duration_ms))
        except Exception as exc:  # telemetry never breaks a request
            _contained(telemetry, exc)

    def _end_span(self, span: trace.Span, flag_text: str, error: str | None) -> None:
        if span.is_recording():
            attributes: dict[str, Any] = {"mesh.response_flags": flag_text}
            if self.route_name:
                attributes["mesh.route_name"] = self.route_name
            if self.cluster:
                attributes["mesh.upstream_cluster"] = self.cluster
            if self.upstream_host:
                attributes["mesh.upstream_host"] = self.upstream_host
            if self.status:
                attributes["http.response.status_code"] = self.status
            if self.grpc_status is not None:
                attributes["rpc.grpc.status_code"] = self.grpc_status
            failed = error is not None or self.status >= 500 or bool(self.grpc_status)
            attributes.update(end_tags(self, flag_text, failed))
            if failed:
                attributes["error.type"] = error or str(self.grpc_status or self.status)
                span.set_status(Status(StatusCode.ERROR, error))
            span.set_attributes(attributes)
        span.end()

    def _measure(
        self, telemetry: Telemetry, side: SidePolicy, flag_text: str, duration_ms: float
    ) -> None:
        """Istio's request metrics: kept natively, and through OpenTelemetry
        when an SDK records them."""
        values = self._labels(flag_text)
        stats = telemetry.stats
        if stats is not None:
            stats.record(
                values,
                side,
                duration_ms,
                self.request_bytes,
                self.response_bytes,
                self.request_messages,
                self.response_messages,
            )
        istio = telemetry.metrics
        if istio is not None and telemetry.otel_measured():
            grpc = self.protocol == "grpc"
            messages = (self.request_messages, self.response_messages) if grpc else None
            istio.record(
                values, duration_ms, self.request_bytes, self.response_bytes, side, messages
            )

    def _labels(self, flag_text: str) -> tuple[str, ...]:
        prefix = self.telemetry.labels(
            self.reporter,
            self.peer_workload,
            self.service or self.authority,
            self.secure,
            self.peer_principal,
        )
        grpc = "" if self.grpc_status is None else str(self.grpc_status)
        return (*prefix, self.protocol, str(self.status), grpc, flag_text)


def _request_id() -> str:
    """A UUID4, as Envoy generates x-request-id (random.getrandbits is
    several times cheaper than uuid.uuid4's os.urandom)."""
    return str(uuid.UUID(int=random.getrandbits(128), version=4))
