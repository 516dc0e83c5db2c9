"""What a matched route does besides choosing a cluster, in words: faults,
mirrors, rewrites, redirect, direct response, CORS, header changes, retries.
`simulate` lists these so its answer is everything that applies to the request,
not only where it goes
(a route that aborts every request must not read as "routed")."""

from __future__ import annotations

from proxyless_mesh.model import FaultAbort, HeaderMutation, RedirectAction, Route, RouteAction


def abort_outcome(route: Route) -> str | None:
    """The outcome when fault injection aborts every request, else None."""
    abort = route.fault.abort if route.fault is not None else None
    if abort is None or abort.percentage < 100:
        return None
    return f"aborted by fault injection: {_abort_status(abort)} (flag FI), never sent upstream"


def route_effects(route: Route) -> list[str]:
    """One line per thing the route does to the request or its answer."""
    effects: list[str] = []
    if route.fault is not None:
        if route.fault.delay is not None:
            delay = route.fault.delay
            effects.append(f"fault delay {delay.delay:g}s for {delay.percentage:g}% of requests")
        if route.fault.abort is not None:
            abort = route.fault.abort
            status = _abort_status(abort)
            effects.append(f"fault abort {status} for {abort.percentage:g}% of requests (FI)")
    if route.redirect is not None:
        effects.append(_redirect(route.redirect))
    if route.direct_response is not None:
        direct = route.direct_response
        effects.append(f"direct response {direct.status} ({len(direct.body)} bytes of body)")
    if route.cors is not None:
        cors = route.cors
        effects.append(
            f"CORS: {len(cors.allow_origins)} allowed origin matcher(s); preflights from them "
            "answered by the mesh"
            + ("" if cors.forward_not_matching_preflights else ", others answered without CORS")
        )
    if route.action is not None:
        effects += _action(route.action)
    effects += _headers("request", route.request_headers)
    effects += _headers("response", route.response_headers)
    return effects


def _abort_status(abort: FaultAbort) -> str:
    if abort.grpc_status is not None:
        return f"gRPC status {abort.grpc_status}"
    return f"HTTP {abort.http_status}"


def _redirect(redirect: RedirectAction) -> str:
    parts = [f"redirect {redirect.response_code}"]
    for label, value in (
        ("scheme", redirect.scheme),
        ("host", redirect.host),
        ("port", redirect.port),
        ("path", redirect.path),
        ("prefix", redirect.prefix_rewrite),
    ):
        if value is not None:
            parts.append(f"{label} {value}")
    return ", ".join(parts)


def _action(action: RouteAction) -> list[str]:
    effects = []
    if action.prefix_rewrite is not None:
        effects.append(f"rewrite uri prefix to {action.prefix_rewrite}")
    if action.regex_rewrite is not None:
        rewrite = action.regex_rewrite
        effects.append(f"rewrite uri /{rewrite.pattern}/ to {rewrite.substitution}")
    if action.host_rewrite is not None:
        effects.append(f"rewrite authority to {action.host_rewrite}")
    effects += [f"mirror {m.fraction * 100:g}% to {m.cluster}" for m in action.mirrors]
    retry = action.retry_policy
    if retry is not None and retry.num_retries > 0:
        per_try = f", per try {retry.per_try_timeout:g}s" if retry.per_try_timeout else ""
        conditions = ",".join(sorted(retry.retry_on))
        codes = ",".join(str(c) for c in retry.retriable_status_codes)
        status = f" (status {codes})" if codes else ""
        effects.append(f"retries {retry.num_retries} on {conditions}{status}{per_try}")
    return effects


def _headers(which: str, mutation: HeaderMutation) -> list[str]:
    return (
        [f"{which} header set {k}: {v}" for k, v in mutation.set]
        + [f"{which} header add {k}: {v}" for k, v in mutation.add]
        + [f"{which} header remove {k}" for k in mutation.remove]
    )
