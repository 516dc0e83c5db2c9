"""VirtualService corsPolicy and directResponse: loaded as Istio validates
them, translated as Istio translates them (the route's CORS filter config,
optional for gRPC; a DirectResponseAction), decoded by the library, and
applied as Envoy's CORS filter applies them."""

from __future__ import annotations

import textwrap

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from google.protobuf import any_pb2
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import ROUTE, ClientKind, NodeInfo, translate

from proxyless_mesh.model import CorsPolicy, MatchKind, StringMatcher
from proxyless_mesh.routing import cors
from proxyless_mesh.xds_client import decode_route_configuration

from .test_config_policies import load, problems

SERVICE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web}
spec:
  resolution: STATIC
  location: MESH_INTERNAL
  hosts: [web.mesh]
  ports: [{number: 8080, name: http}]
  endpoints: [{address: 10.0.0.1}]
"""


def vs(http: str) -> str:
    head = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\n"
    body = textwrap.indent(textwrap.dedent(http), "  ")
    return head + "spec:\n  hosts: [web.mesh]\n  http:\n" + body


ROUTES = """
- match: [{uri: {prefix: /down}}]
  directResponse: {status: 503, body: {bytes: aGVsbG8=}}
- corsPolicy:
    allowOrigins: [{exact: 'https://a.test'}, {prefix: 'https://b.'}]
    allowMethods: [GET, PUT]
    exposeHeaders: [x-a, x-b]
    maxAge: 90s
    allowCredentials: false
    unmatchedPreflights: IGNORE
  route: [{destination: {host: web.mesh}}]
"""


def test_translated_as_istio_and_decoded_by_the_library() -> None:
    config = load(SERVICE, vs(ROUTES))
    resources = translate(config, build_static_registry(config), NodeInfo("n", ClientKind.MESH))
    message = resources.resources[ROUTE]["web.mesh:8080"]
    down, site = message.virtual_hosts[0].routes
    assert down.direct_response.status == 503
    assert down.direct_response.body.inline_bytes == b"hello"
    wrapper = rc_pb2.FilterConfig()
    site.typed_per_filter_config["envoy.filters.http.cors"].Unpack(wrapper)
    assert wrapper.is_optional  # a gRPC client has no CORS filter: it must not NACK
    policy = rc_pb2.CorsPolicy()
    wrapper.config.Unpack(policy)
    assert (policy.allow_methods, policy.expose_headers, policy.max_age) == (
        "GET,PUT",
        "x-a,x-b",
        "90",
    )
    assert policy.HasField("allow_credentials") and not policy.allow_credentials.value
    assert not policy.forward_not_matching_preflights.value  # IGNORE

    packed = any_pb2.Any()
    packed.Pack(message)
    decoded = decode_route_configuration(packed).virtual_hosts[0].routes
    assert decoded[0].direct_response is not None
    assert (decoded[0].direct_response.status, decoded[0].direct_response.body) == (503, b"hello")
    assert decoded[0].action is None
    assert decoded[1].cors == CorsPolicy(
        allow_origins=(
            StringMatcher(MatchKind.EXACT, "https://a.test"),
            StringMatcher(MatchKind.PREFIX, "https://b."),
        ),
        allow_methods="GET,PUT",
        expose_headers="x-a,x-b",
        max_age="90",
        forward_not_matching_preflights=False,
    )


@pytest.mark.parametrize(
    ("http", "expected"),
    [
        (
            "- directResponse: {status: 99, body: {string: a, bytes: YQ==}}\n"
            "  route: [{destination: {host: web.mesh}}]\n  retries: {attempts: 1}\n",
            [
                "spec.http[0].directResponse.status: must be between 200 and 599, got 99",
                "spec.http[0].directResponse.body: must set exactly one of string, bytes",
                "spec.http[0].route: cannot be used together with directResponse",
                "spec.http[0].retries: cannot be used together with directResponse",
            ],
        ),
        (
            "- directResponse: {body: {bytes: '***'}}\n",
            [
                "spec.http[0].directResponse.status: missing required field",
                "spec.http[0].directResponse.body.bytes: expected base64",
            ],
        ),
        (
            "- corsPolicy: {allowOrigins: [{glob: x}], maxAge: soon, unmatchedPreflights: DROP,"
            " allowPrivateNetwork: true}\n  route: [{destination: {host: web.mesh}}]\n",
            [
                "spec.http[0].corsPolicy.allowPrivateNetwork: unknown field",
                "spec.http[0].corsPolicy.allowOrigins[0].glob: unknown field",
                'spec.http[0].corsPolicy.maxAge: invalid duration "soon" (expected e.g. "24h")',
                "spec.http[0].corsPolicy.unmatchedPreflights: must be one of "
                "('UNSPECIFIED', 'FORWARD', 'IGNORE'), got 'DROP'",
            ],
        ),
    ],
)
def test_mistakes_are_named(http: str, expected: list[str]) -> None:
    assert problems(SERVICE, vs(http)) == expected


POLICY = CorsPolicy(
    allow_origins=(StringMatcher(MatchKind.SUFFIX, ".ok.test"),),
    allow_methods="GET",
    allow_headers="x-h",
    max_age="60",
    allow_credentials=True,
    expose_headers="x-e",
)


@pytest.mark.parametrize(
    ("method", "headers", "preflight", "added"),
    [
        ("GET", {}, None, ()),  # no Origin: not a CORS request
        ("GET", {"origin": "https://bad.test"}, None, ()),  # not allowed: untouched
        (
            "GET",
            {"origin": "https://a.ok.test"},
            None,
            (
                ("access-control-allow-origin", "https://a.ok.test"),
                ("access-control-allow-credentials", "true"),
                ("access-control-expose-headers", "x-e"),
            ),
        ),
        (
            "OPTIONS",
            {"origin": "https://a.ok.test", "access-control-request-method": "GET"},
            (
                ("access-control-allow-origin", "https://a.ok.test"),
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-methods", "GET"),
                ("access-control-allow-headers", "x-h"),
                ("access-control-max-age", "60"),
            ),
            (),
        ),
        # OPTIONS without Access-Control-Request-Method is no preflight: forwarded, headers added.
        ("OPTIONS", {"origin": "https://a.ok.test"}, None, None),
        # A preflight from an origin not allowed is forwarded (FORWARD).
        ("OPTIONS", {"origin": "https://x.test", "access-control-request-method": "GET"}, None, ()),
    ],
)
def test_envoy_cors_filter_decisions(
    method: str,
    headers: dict[str, str],
    preflight: tuple[tuple[str, str], ...] | None,
    added: tuple[tuple[str, str], ...] | None,
) -> None:
    answer, extra = cors(POLICY, method, headers.get)
    assert answer == preflight
    if added is not None:
        assert extra == added
    else:
        assert ("access-control-allow-origin", "https://a.ok.test") in extra


def test_a_star_matcher_allows_every_origin_and_ignore_answers_unmatched_preflights() -> None:
    star = CorsPolicy(allow_origins=(StringMatcher(MatchKind.EXACT, "*"),))
    answer, _ = cors(
        star, "OPTIONS", {"origin": "https://any", "access-control-request-method": "GET"}.get
    )
    assert answer == (("access-control-allow-origin", "https://any"),)
    strict = CorsPolicy(
        allow_origins=(StringMatcher(MatchKind.EXACT, "https://a"),),
        forward_not_matching_preflights=False,
    )
    answer, extra = cors(
        strict, "OPTIONS", {"origin": "https://b", "access-control-request-method": "GET"}.get
    )
    assert (answer, extra) == ((), ())
