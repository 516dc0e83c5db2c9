"""VirtualService http[] resilience and rewriting fields on an Envoy Route,
following Istio's translation (pilot's route and retry packages).

- retries -> ``retry_policy``. No ``retries`` written: Istio's default policy
  (2 retries on connect-failure, refused-stream, unavailable, cancelled and
  retriable status 503, on another host). ``attempts: 0``: no policy. The
  previous-hosts predicate is left out on routes with a consistent-hash
  policy, as Istio does: retrying elsewhere would defeat the stickiness.
- consistentHash of the destination -> ``hash_policy``.
- fault -> ``typed_per_filter_config["envoy.filters.http.fault"]`` (gRFC A33 shape);
  the HCM carries the (empty) fault filter before the router, see protos.py.
- mirror(s) -> ``request_mirror_policies``; rewrite -> ``prefix_rewrite``
  (whatever the match kind, as Istio), ``regex_rewrite``, ``host_rewrite_literal``;
  redirect -> ``redirect``; headers -> ``{request,response}_headers_to_{add,remove}``
  (set: OVERWRITE_IF_EXISTS_OR_ADD, add: APPEND_IF_EXISTS_OR_ADD).

Percentages (0..100, doubles) become FractionalPercent per million, as Istio.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2,
)
from envoy.type.matcher.v3 import regex_pb2
from envoy.type.v3 import percent_pb2

from mesh_control_plane.config.model import (
    ConsistentHash,
    HeaderOperations,
    HTTPFaultInjection,
    HTTPRedirect,
    HTTPRetry,
    HTTPRewrite,
)
from mesh_control_plane.translate.protos import FAULT_FILTER, duration, pack

DEFAULT_RETRY = HTTPRetry(
    attempts=2,
    retry_on=("connect-failure", "refused-stream", "unavailable", "cancelled"),
    retriable_status_codes=(503,),
)
"""Istio's policy for routes that say nothing about retries."""

PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
PREVIOUS_PRIORITIES = "envoy.retry_priorities.previous_priorities"
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 5

_REDIRECT_CODES = {
    301: rc_pb2.RedirectAction.MOVED_PERMANENTLY,
    302: rc_pb2.RedirectAction.FOUND,
    303: rc_pb2.RedirectAction.SEE_OTHER,
    307: rc_pb2.RedirectAction.TEMPORARY_REDIRECT,
    308: rc_pb2.RedirectAction.PERMANENT_REDIRECT,
}
_SET = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_ADD = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD


def retry_policy(retries: HTTPRetry | None, hashed: bool) -> rc_pb2.RetryPolicy | None:
    """The route's retry policy (None: retries disabled by ``attempts: 0``)."""
    retries = retries or DEFAULT_RETRY
    if retries.attempts <= 0:
        return None
    conditions = list(retries.retry_on)
    if retries.retriable_status_codes and "retriable-status-codes" not in conditions:
        conditions.append("retriable-status-codes")
    policy = rc_pb2.RetryPolicy(
        retry_on=",".join(conditions),
        retriable_status_codes=retries.retriable_status_codes,
        host_selection_retry_max_attempts=HOST_SELECTION_RETRY_MAX_ATTEMPTS,
    )
    policy.num_retries.value = retries.attempts
    if retries.per_try_timeout is not None:
        policy.per_try_timeout.CopyFrom(duration(retries.per_try_timeout))
    if not hashed:
        policy.retry_host_predicate.add(
            name=PREVIOUS_HOSTS, typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate())
        )
    if retries.retry_remote_localities:
        config = previous_priorities_config_pb2.PreviousPrioritiesConfig(
            update_frequency=retries.attempts + 1
        )
        policy.retry_priority.name = PREVIOUS_PRIORITIES
        policy.retry_priority.typed_config.CopyFrom(pack(config))
    return policy


def hash_policy(hashing: ConsistentHash) -> rc_pb2.RouteAction.HashPolicy:
    policy = rc_pb2.RouteAction.HashPolicy()
    if hashing.key == "header":
        policy.header.header_name = hashing.name
    elif hashing.key == "cookie":
        policy.cookie.name = hashing.name
        policy.cookie.path = hashing.cookie_path
        if hashing.cookie_ttl is not None:
            policy.cookie.ttl.CopyFrom(duration(hashing.cookie_ttl))
    elif hashing.key == "source_ip":
        policy.connection_properties.source_ip = True
    elif hashing.key == "query_parameter":
        policy.query_parameter.name = hashing.name
    else:
        raise ValueError(f"unknown consistent hash key {hashing.key!r}")
    return policy


def fractional(percent: float) -> percent_pb2.FractionalPercent:
    """0..100 as parts per million (Istio's conversion, rounded rather than truncated)."""
    return percent_pb2.FractionalPercent(
        numerator=round(percent * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def apply_fault(route: rc_pb2.Route, fault: HTTPFaultInjection) -> None:
    config = fault_pb2.HTTPFault()
    if fault.delay is not None:
        config.delay.fixed_delay.CopyFrom(duration(fault.delay.fixed_delay))
        config.delay.percentage.CopyFrom(fractional(fault.delay.percentage))
    if fault.abort is not None:
        abort = fault_pb2.FaultAbort(percentage=fractional(fault.abort.percentage))
        if fault.abort.grpc_status is not None:
            abort.grpc_status = fault.abort.grpc_status
        elif fault.abort.http_status is not None:
            abort.http_status = fault.abort.http_status
        config.abort.CopyFrom(abort)
    route.typed_per_filter_config[FAULT_FILTER].CopyFrom(pack(config))


def mirror_policy(cluster: str, percentage: float) -> rc_pb2.RouteAction.RequestMirrorPolicy:
    policy = rc_pb2.RouteAction.RequestMirrorPolicy(cluster=cluster)
    policy.runtime_fraction.default_value.CopyFrom(fractional(percentage))
    return policy


def apply_rewrite(action: rc_pb2.RouteAction, rewrite: HTTPRewrite) -> None:
    if rewrite.uri is not None:
        action.prefix_rewrite = rewrite.uri
    if rewrite.uri_regex is not None:
        pattern, substitution = rewrite.uri_regex
        action.regex_rewrite.pattern.CopyFrom(regex_pb2.RegexMatcher(regex=pattern))
        action.regex_rewrite.substitution = substitution
    if rewrite.authority is not None:
        action.host_rewrite_literal = rewrite.authority


def redirect_action(redirect: HTTPRedirect) -> rc_pb2.RedirectAction:
    action = rc_pb2.RedirectAction(response_code=_REDIRECT_CODES[redirect.redirect_code])
    if redirect.uri is not None:
        action.path_redirect = redirect.uri
    if redirect.authority is not None:
        action.host_redirect = redirect.authority
    if redirect.port is not None:
        action.port_redirect = redirect.port
    if redirect.scheme is not None:
        action.scheme_redirect = redirect.scheme
    return action


def apply_headers(
    route: rc_pb2.Route, request: HeaderOperations, response: HeaderOperations
) -> None:
    for ops, to_add, to_remove in (
        (request, route.request_headers_to_add, route.request_headers_to_remove),
        (response, route.response_headers_to_add, route.response_headers_to_remove),
    ):
        for pairs, append_action in ((ops.set, _SET), (ops.add, _ADD)):
            for key, value in pairs:
                option = to_add.add(append_action=append_action)
                option.header.key, option.header.value = key, value
        to_remove.extend(ops.remove)
