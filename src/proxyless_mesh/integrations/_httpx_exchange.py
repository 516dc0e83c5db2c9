"""One meshed httpx request, minus the I/O: what the sync and async
transports share.

`passthrough_or_route()` decides whether the mesh handles a request at all
(and answers redirects itself); `Exchange` carries one routed request
through the resilience engine: it points each try at its endpoint, reports
outcomes to the balancer, and turns the engine's `Finish` into a response or
a typed error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from proxyless_mesh.balancer import Outcome, hash_key
from proxyless_mesh.errors import (
    MeshRequestError,
    NoHealthyUpstreamError,
    PeerIdentityError,
    ServiceResolutionError,
    UpstreamConnectionError,
    UpstreamOverflowError,
    UpstreamTimeoutError,
)
from proxyless_mesh.integrations._httpx_telemetry import add_headers, raw_header, take_back
from proxyless_mesh.integrations._httpx_telemetry import routed as telemetry_routed
from proxyless_mesh.integrations._httpx_urls import endpoint_url
from proxyless_mesh.model import Endpoint, MirrorPolicy, Route
from proxyless_mesh.resilience import (
    AttemptResult,
    FailureKind,
    Finish,
    Send,
    apply_header_mutation,
    redirect_location,
    request_flow,
    rewrite_path,
    shadow_host,
    should_mirror,
)
from proxyless_mesh.routing import RouteDecision, cors
from proxyless_mesh.runtime import UNRESOLVED, route_request
from proxyless_mesh.telemetry import Call, QuietCall

if TYPE_CHECKING:
    from proxyless_mesh.runtime import MeshSnapshot, Runtime

# Bodies that are not already in memory are buffered for retries up to this
# size (from Content-Length); larger or unsized streaming bodies are sent
# once, never retried, and the reason is recorded on the response.
MAX_REPLAY_BYTES = 1 << 20
_GATEWAY = frozenset({502, 503, 504})
_ERRORS: dict[str, type[MeshRequestError]] = {
    "UT": UpstreamTimeoutError,
    "UO": UpstreamOverflowError,
    "UH": NoHealthyUpstreamError,
}


def failure_kind(exc: BaseException) -> FailureKind:
    """How an exception from the inner transport reads to the retry engine."""
    if isinstance(exc, PeerIdentityError):  # the handshake found the wrong peer
        return FailureKind.CONNECT_FAILURE
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return FailureKind.CONNECT_FAILURE
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return FailureKind.TIMEOUT
    return FailureKind.RESET


@dataclass(slots=True)
class Routed:
    """A request the mesh will handle (or must first resolve). Made per
    request, so not frozen (that costs ~0.4 µs); never changed once made."""

    authority: str
    path: str
    snapshot: MeshSnapshot
    decision: RouteDecision | None
    needs_body: bool = False
    cors_headers: tuple[tuple[str, str], ...] = ()  # what the CORS filter adds to the answer
    unresolved: bool = False


def _unresolved_error(
    mesh: Runtime, authority: str, request: httpx.Request
) -> ServiceResolutionError:
    return ServiceResolutionError(
        f"could not learn whether {authority} is a mesh service: "
        f"no answer from the control plane ({mesh.control_plane}) "
        f"within {mesh.resolve_timeout:g}s",
        request=request,
    )


def passthrough_or_route(
    mesh: Runtime,
    request: httpx.Request,
    parts: tuple[str, str],
    *,
    blocking: bool,
    last_try: bool = False,
) -> Routed | httpx.Response | None:
    """None: not a mesh request, pass it through. A Response: the mesh
    answered itself (a redirect). Routed: send it through the engine (or, when
    `unresolved`, resolve the authority first and call again with last_try).
    `parts` are the request's `url_parts()`."""
    authority, path = parts
    snapshot = mesh.snapshot
    policy = mesh.outbound_policy
    decision = route_request(
        snapshot, authority, path, request.method, request.headers.get,
        outbound_policy=policy, request=request,
    )  # fmt: skip
    if decision is UNRESOLVED:
        if not blocking:
            if last_try:
                raise _unresolved_error(mesh, authority, request)
            return Routed(authority, path, snapshot, None, unresolved=True)
        mesh.resolve_blocking(authority)
        snapshot = mesh.snapshot
        decision = route_request(
            snapshot, authority, path, request.method, request.headers.get,
            outbound_policy=policy, request=request,
        )  # fmt: skip
        if decision is UNRESOLVED:
            raise _unresolved_error(mesh, authority, request)
    if not isinstance(decision, RouteDecision):
        return None
    route = decision.route
    added: tuple[tuple[str, str], ...] = ()
    if route is not None and route.cors is not None:  # Envoy's CORS filter, before the router
        preflight, added = cors(route.cors, request.method, request.headers.get)
        if preflight is not None:
            return httpx.Response(200, headers=preflight, request=request)
    if route is not None and not decision.cluster:
        answer = _answer(request, route)
        if answer is not None:
            answer.headers.update(added)
            return answer
    in_memory = isinstance(request.stream, httpx.ByteStream)  # the usual case: no call
    return Routed(authority, path, snapshot, decision, not in_memory and _sized(request), added)


def _answer(request: httpx.Request, route: Route) -> httpx.Response | None:
    """The response of a route that answers itself: a redirect or a direct response."""
    if route.direct_response is not None:
        direct = route.direct_response
        return httpx.Response(direct.status, content=direct.body, request=request)
    if route.redirect is None:
        return None
    url = request.url
    status, location = redirect_location(
        scheme=url.scheme,
        host=url.host,
        port=url.port,
        path=url.raw_path.decode("ascii"),
        redirect=route.redirect,
        match=route.match.path,
    )
    return httpx.Response(status, headers={"location": location}, request=request)


def _sized(request: httpx.Request) -> bool:
    """A streamed body small enough to buffer for retries."""
    length = request.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= MAX_REPLAY_BYTES


def _cookie_lookup(request: httpx.Request) -> Callable[[str], str | None]:
    def lookup(name: str) -> str | None:
        for raw in request.headers.get_list("cookie"):
            for part in raw.split(";"):
                key, _, value = part.strip().partition("=")
                if key == name:
                    return value
        return None

    return lookup


class Exchange:
    """One routed request on its way through `request_flow`."""

    def __init__(
        self,
        mesh: Runtime,
        request: httpx.Request,
        routed: Routed,
        call: Call | QuietCall | None = None,
    ) -> None:
        decision = routed.decision
        if decision is None:
            raise ValueError("Exchange needs a routed request")
        self.mesh = mesh
        self.request = request
        self.authority = routed.authority
        self.original_url = request.url
        self.base_timeout = request.extensions.get("timeout")
        self.route: Route | None = (route := decision.route)
        self.last_error: BaseException | None = None
        self.balancer = routed.snapshot.balancers.get(decision.cluster)
        self._key: int | None = None
        self.cookie = None
        self.path: str | None = None
        self.response: httpx.Response | None = None  # the last try's, until superseded
        self.mirrors: tuple[MirrorPolicy, ...] = ()  # the transports call mirror() if any
        self.cors_headers = routed.cors_headers
        action = None
        if route is not None:  # what the route changes, each asked once
            action = route.action
            if action is not None:
                self.mirrors = action.mirrors
                if action.hash_policies:
                    self._key, self.cookie = hash_key(
                        action.hash_policies,
                        header=request.headers.get,
                        cookie=_cookie_lookup(request),
                        query=request.url.params.get,
                        source_ip=mesh.node_id,  # this process is the "downstream"
                    )
                if action.prefix_rewrite is not None or action.regex_rewrite is not None:
                    path = request.url.raw_path.decode("ascii")
                    self.path = rewrite_path(path, route.match.path, action)
            mutation = route.request_headers
            if mutation.set or mutation.add or mutation.remove:
                request.headers = httpx.Headers(
                    apply_header_mutation(request.headers.multi_items(), mutation)
                )
            if action is not None and action.host_rewrite:
                request.headers["host"] = action.host_rewrite
        source = routed.snapshot.sources.get(decision.cluster)
        cluster = source.cluster if source is not None else None
        self.tls = cluster.tls if cluster is not None else None
        self.call = call  # telemetry: told of the route and of each try
        self.added: tuple[tuple[bytes, bytes, bytes], ...] | None = None  # peer headers
        self.attempt_added: tuple[tuple[bytes, bytes, bytes], ...] | None = None
        if call is not None:
            telemetry_routed(call, decision.route_name, decision.cluster, cluster)
        self.flow = request_flow(
            route_name=decision.route_name,
            cluster=decision.cluster,
            policy=action.retry_policy if action is not None else None,
            route_timeout=decision.timeout,
            pick=self._pick,
            resources=mesh.cluster_resources(decision.cluster, cluster),
            clock=mesh.clock,
            rng=mesh.rng,
            replayable=isinstance(request.stream, httpx.ByteStream),
            fault=route.fault if route is not None else None,
            no_endpoint_reason=self._no_endpoint_reason,
        )

    def _pick(self, exclude: Any) -> Endpoint | None:
        balancer = self.balancer
        return balancer.pick(self._key, exclude) if balancer is not None else None

    def _no_endpoint_reason(self) -> str:
        """The engine says "no healthy upstream in cluster C: <this>"."""
        if self.balancer is None:
            return f"{self.authority}: this client does not have the cluster yet"
        return f"{self.authority}: {self.balancer.reason}"

    # -- one try ------------------------------------------------------------

    def prepare(self, send: Send) -> None:
        request = self.request
        request.url = endpoint_url(self.original_url, send.endpoint, self.path)
        if send.timeout is None:  # the usual first try: x-envoy-attempt-count: 1, prepared
            added = add_headers(request.headers, send.headers)
            if added is not None:
                self.attempt_added = added
        else:  # the expected-timeout value changes per try: nothing to prepare
            for name, value in send.headers:
                request.headers[name] = value
            request.extensions["timeout"] = _capped(self.base_timeout, send.timeout)
        if self.balancer is not None:
            self.balancer.on_start(send.endpoint)
        if self.call is not None:
            endpoint = send.endpoint
            self.call.attempt_start(
                send.attempt,
                endpoint.address,
                endpoint.port,
                request.headers.__setitem__,
                endpoint.workload,
                self.add_headers,
            )

    def add_headers(self, pairs: tuple[tuple[str, str], ...]) -> None:
        added = add_headers(self.request.headers, pairs)
        if added is not None:
            self.added = added

    def answered(self, send: Send, response: httpx.Response) -> AttemptResult:
        status = response.status_code
        grpc = raw_header(response.headers, b"grpc-status")
        grpc_status = int(grpc) if grpc is not None and grpc.isascii() and grpc.isdigit() else None
        if self.balancer is not None:
            if status >= 500:
                outcome = Outcome.GATEWAY_ERROR if status in _GATEWAY else Outcome.HTTP_5XX
            else:
                outcome = Outcome.SUCCESS
            self.balancer.on_finish(send.endpoint, outcome)
        if self.call is not None:
            self.call.attempt_end(status, None)
        return AttemptResult(
            status=status,
            headers=response.headers.get,
            grpc_status=grpc_status,
        )

    def failed(self, send: Send, kind: FailureKind, exc: BaseException) -> AttemptResult:
        self.last_error = exc
        if self.balancer is not None:
            self.balancer.on_finish(send.endpoint, Outcome.LOCAL_ORIGIN_FAILURE)
        if self.call is not None:
            self.call.attempt_end(None, kind.value)
        return AttemptResult(failure=kind)

    def supersede(self) -> None:
        """The last try's response will not be the answer: release it."""
        response, self.response = self.response, None
        if response is not None:
            response.close()

    def supersede_async(self) -> Awaitable[None] | None:
        """`supersede` for the async transport: what to await, or None."""
        response, self.response = self.response, None
        return response.aclose() if response is not None else None

    # -- the end ------------------------------------------------------------

    def conclude(self, finish: Finish, response: httpx.Response | None) -> httpx.Response:
        request = self.request
        if finish.use_last_response and response is not None:
            route = self.route
            if route is not None:
                mutation = route.response_headers
                if mutation.set or mutation.add or mutation.remove:
                    response.headers = httpx.Headers(
                        apply_header_mutation(response.headers.multi_items(), mutation)
                    )
            if self.cookie is not None:
                response.headers = httpx.Headers(
                    [*response.headers.multi_items(), ("set-cookie", _set_cookie(self.cookie))]
                )
            if self.cors_headers:
                response.headers.update(self.cors_headers)
            if finish.flags:
                response.extensions["mesh_response_flags"] = finish.flags
            return response
        if response is not None:
            response.close()
        if finish.abort_status is not None:
            return self._synthetic(finish.abort_status, {}, finish.flags)
        if finish.abort_grpc_status is not None:
            return self._synthetic(
                200,
                {
                    "content-type": "application/grpc",
                    "grpc-status": str(finish.abort_grpc_status),
                    "grpc-message": "fault filter abort",
                },
                finish.flags,
            )
        failure = finish.error
        if failure is None:  # the engine promises one outcome; be loud if not
            raise RuntimeError(f"request flow ended without an outcome: {finish}")
        if isinstance(self.last_error, PeerIdentityError):
            # The caller learns which identity was expected and which it met.
            self.last_error.flags = finish.flags
            raise self.last_error
        error_class = _ERRORS.get(failure.flag, UpstreamConnectionError)
        error = error_class(failure.message, request=request)
        error.flags = finish.flags
        raise error from self.last_error

    def _synthetic(
        self, status: int, headers: dict[str, str], flags: tuple[str, ...]
    ) -> httpx.Response:
        response = httpx.Response(
            status,
            headers=[*headers.items(), *self.cors_headers],
            content=b"fault filter abort",
            request=self.request,
        )
        response.extensions["mesh_response_flags"] = flags
        return response

    def restore(self) -> None:
        if self.added is not None:
            take_back(self.request.headers, self.added)
        if self.attempt_added is not None:
            take_back(self.request.headers, self.attempt_added)
        self.request.url = self.original_url
        if self.base_timeout is not None:
            self.request.extensions["timeout"] = self.base_timeout

    # -- mirroring ----------------------------------------------------------

    def mirror(self, send_copy: Callable[[httpx.Request], None]) -> None:
        """Hand a copy to each mirror the route samples this request for.
        Only requests whose body is in memory are mirrored."""
        request = self.request
        if not isinstance(request.stream, httpx.ByteStream):
            return
        for policy in self.mirrors:
            if not should_mirror(policy, self.mesh.rng):
                continue
            balancer = self.mesh.snapshot.balancers.get(policy.cluster)
            endpoint = balancer.pick() if balancer is not None else None
            if endpoint is None:
                self.mesh.count_mirror_failure()
                continue
            headers = httpx.Headers(request.headers.multi_items())
            headers["host"] = shadow_host(request.headers.get("host", self.authority))
            copy = httpx.Request(
                request.method,
                endpoint_url(self.original_url, endpoint, self.path),
                headers=headers,
                content=request.content,
            )
            send_copy(copy)


def _capped(base: Any, limit: float) -> dict[str, float | None]:
    """httpx's per-phase timeouts, each capped at `limit` seconds."""
    phases = ("connect", "read", "write", "pool")
    if not isinstance(base, dict):
        return dict.fromkeys(phases, limit)
    capped: dict[str, float | None] = {}
    for phase in phases:
        value = base.get(phase)
        capped[phase] = limit if value is None else min(value, limit)
    return capped


def _set_cookie(cookie: Any) -> str:
    parts = [f"{cookie.name}={cookie.value}"]
    if cookie.path:
        parts.append(f"Path={cookie.path}")
    if cookie.ttl:
        parts.append(f"Max-Age={int(cookie.ttl)}")
    parts.append("HttpOnly")
    return "; ".join(parts)
