"""The inbound decision table: Istio YAML policy, raw request bytes, expected status.

Rows come from Istio's and Envoy's published security bulletins (the `source`
column) and the hygiene rules of issue #16. `test_inbound_decision_table.py`
sends every row's bytes over a raw socket to every server stack and checks the
status, what the app was handed (method, Host, path), and that all stacks agree.

`stricter` says where the project refuses what Istio's Envoy would pass (the
README lists these). `grpc` is True when the row is also sent as a gRPC call
(its path as `:path`, POST, its Authorization header as metadata); otherwise
a short reason why it does not apply there. `grpc_status` is set where gRPC
answers otherwise on purpose (RAW_PATH_ONLY), the only allowed difference.

Requests are written without `Connection: close` (the test adds it) and with
`{TOKEN}` / `{EXPIRED}` / `{FORGED}` / `{ANY_ISS}` / `{ANY_KEY}` where a JWT goes.
"""

from __future__ import annotations

from dataclasses import dataclass

ISSUER = "https://issuer.example"

POLICIES = {
    # Denies by path, method and host: the bypass rows aim at what it denies.
    "deny": """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-sensitive, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
  - to: [{operation: {methods: ["DELETE"]}}]
  - to: [{operation: {hosts: ["secret.example.com"]}}]
  - when: [{key: "request.headers[x-user]", values: ["root"]}]
""",
    # Allows one host and one path tree: the rows aim at being let in.
    "allow": """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-public, namespace: foo}
spec:
  action: ALLOW
  rules:
  - to: [{operation: {hosts: ["api.example.com"], paths: ["/public", "/public/*"]}}]
""",
    # JWT required for /admin (requestPrincipals), /public open. The second
    # rule has no issuer: its keys accept a token whatever its `iss`.
    "jwt": f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: foo}}
spec:
  jwtRules:
  - issuer: "{ISSUER}"
    jwks: "JWKS"
  - jwks: "ANY_ISSUER_JWKS"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: foo}}
spec:
  action: ALLOW
  rules:
  - to: [{{operation: {{paths: ["/public", "/public/*"]}}}}]
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/admin"]}}}}]
    to: [{{operation: {{paths: ["/admin", "/admin/*"]}}}}]
""",
}
NORMALIZATION = {"deny": "BASE", "allow": "BASE", "jwt": "BASE", "deny-merge": "MERGE_SLASHES"}
POLICIES["deny-merge"] = POLICIES["deny"]

H = b"\r\nHost: api.example.com"
# grpcio dispatches on the :path as sent and an interceptor cannot change it:
# an allowed call whose path normalization would change is refused (INTERNAL).
RAW_PATH_ONLY = 400
GRPC_STRICTER = (
    "gRPC: an allowed :path not in normal form is refused (Envoy would forward it normalized)"
)


@dataclass(frozen=True)
class Row:
    id: str
    policy: str
    request: bytes  # request line and headers, CRLF-separated, no final blank line
    status: int  # 200 served, 400 malformed, 401 bad JWT, 403 denied
    source: str
    path: str | None = None  # what the app is handed when 200 (None: not checked)
    host: str = "api.example.com"
    grpc: bool | str = "HTTP/1 only"
    grpc_status: int | None = None  # where gRPC answers otherwise, on purpose
    stricter: str = ""
    body: bytes = b""


# One row a line or two: a table reads better than one field a line.
# fmt: off
ROWS = [
    # -- method case and spelling (issue #16; Envoy's codec refuses all of these)
    Row("method-lower-delete", "deny", b"delete /items/1 HTTP/1.1" + H, 400, "issue #16"),
    Row("method-mixed-delete", "deny", b"Delete /items/1 HTTP/1.1" + H, 400, "issue #16"),
    Row("method-upper-delete", "deny", b"DELETE /items/1 HTTP/1.1" + H, 403, "Istio methods"),
    Row("method-lower-get", "deny", b"get /public HTTP/1.1" + H, 400, "Envoy codec"),
    Row("method-custom", "deny", b"FOO /public HTTP/1.1" + H, 400, "Envoy custom methods #18819"),
    Row("method-custom-lower", "deny", b"purge /public HTTP/1.1" + H, 400, "Envoy codec"),
    Row("method-nul", "deny", b"DEL\x00ETE /items HTTP/1.1" + H, 400, "CVE-2019-9900"),
    Row("method-get-ok", "deny", b"GET /public HTTP/1.1" + H, 200, "control", path="/public",
        grpc=True),
    Row("method-post-ok", "deny", b"POST /public HTTP/1.1" + H + b"\r\nContent-Length: 0", 200,
        "control", path="/public"),
    # -- dot segments (CVE-2019-9901, ISTIO-SECURITY-2019-001)
    Row("dot-admin", "deny", b"GET /admin HTTP/1.1" + H, 403, "control", grpc=True),
    Row("dot-admin-slash", "deny", b"GET /admin/ HTTP/1.1" + H, 403, "CVE-2019-9901", grpc=True),
    Row("dot-parent", "deny", b"GET /x/../admin HTTP/1.1" + H, 403, "CVE-2019-9901", grpc=True),
    Row("dot-public-parent", "deny", b"GET /public/../admin/x HTTP/1.1" + H, 403, "CVE-2019-9901",
        grpc=True),
    Row("dot-above-root", "deny", b"GET /../admin HTTP/1.1" + H, 403, "CVE-2019-9901", grpc=True),
    Row("dot-current", "deny", b"GET /./admin HTTP/1.1" + H, 403, "CVE-2019-9901", grpc=True),
    Row("dot-trailing", "deny", b"GET /admin/. HTTP/1.1" + H, 403, "CVE-2019-9901", grpc=True),
    Row("dot-encoded", "deny", b"GET /%2e%2e/admin HTTP/1.1" + H, 403, "CVE-2019-9901", grpc=True),
    Row("dot-encoded-upper", "deny", b"GET /public/%2E%2E/admin HTTP/1.1" + H, 403,
        "CVE-2019-9901", grpc=True),
    Row("dot-half-encoded", "deny", b"GET /public/.%2e/admin HTTP/1.1" + H, 403, "CVE-2019-9901",
        grpc=True),
    Row("dot-double-encoded", "deny", b"GET /public/%252e%252e/admin HTTP/1.1" + H, 200,
        "CVE-2019-9901 (decoded once only)", path="/public/%2e%2e/admin", grpc=True),
    Row("dot-overlong-utf8", "deny", b"GET /%c0%ae%c0%ae/admin HTTP/1.1" + H, 200,
        "overlong UTF-8 is not a dot", grpc=True, grpc_status=RAW_PATH_ONLY,
        stricter=GRPC_STRICTER),
    Row("dot-semicolon", "deny", b"GET /admin/..;/admin HTTP/1.1" + H, 403, "path parameters",
        grpc=True),
    Row("dot-allowed-rewrite", "deny", b"GET /x/../public/./a%2Db HTTP/1.1" + H, 200,
        "app gets the normalized path", path="/public/a-b", grpc=True, grpc_status=RAW_PATH_ONLY,
        stricter=GRPC_STRICTER),
    Row("unreserved-escape", "deny", b"GET /%61dmin HTTP/1.1" + H, 403, "RFC 3986 6.2.2.2",
        grpc=True),
    Row("case-path", "deny", b"GET /ADMIN HTTP/1.1" + H, 200, "Istio paths are case-sensitive",
        path="/ADMIN", grpc=True),
    Row("path-semicolon", "deny", b"GET /admin;x HTTP/1.1" + H, 200, "Envoy keeps ;params",
        path="/admin;x", grpc=True),
    # -- escaped slashes and backslashes (CVE-2021-31920)
    Row("slash-escaped", "deny", b"GET /admin%2Fx HTTP/1.1" + H, 400, "CVE-2021-31920", grpc=True,
        stricter="%2F/%5C refused unless DECODE_AND_MERGE_SLASHES"),
    Row("slash-escaped-lower", "deny", b"GET /public%2f..%2fadmin HTTP/1.1" + H, 400,
        "CVE-2021-31920", grpc=True, stricter="%2F/%5C refused unless DECODE_AND_MERGE_SLASHES"),
    Row("backslash-escaped", "deny", b"GET /public/..%5cadmin HTTP/1.1" + H, 400, "CVE-2021-31920",
        grpc=True, stricter="%2F/%5C refused unless DECODE_AND_MERGE_SLASHES"),
    Row("backslash-raw", "deny", b"GET /public\\..\\admin HTTP/1.1" + H, 403,
        "Envoy BASE: \\ is /"),
    Row("backslash-start", "deny", b"GET \\admin HTTP/1.1" + H, 400, "not origin-form"),
    # -- merged slashes (Istio pathNormalization)
    Row("slashes-base", "deny", b"GET //admin HTTP/1.1" + H, 200, "Istio BASE keeps //",
        path="//admin", grpc=True),
    Row("slashes-merge", "deny-merge", b"GET //admin HTTP/1.1" + H, 403, "MERGE_SLASHES",
        grpc=True),
    Row("slashes-merge-many", "deny-merge", b"GET ///admin/x HTTP/1.1" + H, 403, "MERGE_SLASHES",
        grpc=True),
    Row("slashes-merge-allowed", "deny-merge", b"GET /public//x HTTP/1.1" + H, 200,
        "MERGE_SLASHES", path="/public/x", grpc=True, grpc_status=RAW_PATH_ONLY,
        stricter=GRPC_STRICTER),
    # -- query and fragment (CVE-2020-8595, CVE-2021-39156)
    Row("query-exact", "deny", b"GET /admin?x=1 HTTP/1.1" + H, 403, "CVE-2020-8595"),
    Row("query-dots", "deny", b"GET /admin?/../public HTTP/1.1" + H, 403, "CVE-2020-8595"),
    Row("fragment", "deny", b"GET /admin#x HTTP/1.1" + H, 403, "CVE-2021-39156"),
    Row("fragment-dots", "deny", b"GET /admin#/../public HTTP/1.1" + H, 403, "CVE-2021-39156"),
    # -- NUL, control bytes, bad escapes (CVE-2019-9900)
    Row("nul-escaped", "deny", b"GET /admin%00 HTTP/1.1" + H, 400, "CVE-2019-9900", grpc=True),
    Row("nul-raw-path", "deny", b"GET /ad\x00min HTTP/1.1" + H, 400, "CVE-2019-9900"),
    Row("nul-in-query", "deny", b"GET /public?a=\x00 HTTP/1.1" + H, 400, "CVE-2019-9900"),
    Row("bad-escape", "deny", b"GET /admin%zz HTTP/1.1" + H, 400, "Envoy normalize_path",
        grpc=True),
    Row("cut-escape", "deny", b"GET /admin% HTTP/1.1" + H, 400, "Envoy normalize_path", grpc=True),
    Row("space-in-target", "deny", b"GET /admin /x HTTP/1.1" + H, 400, "RFC 9112 3"),
    Row("nul-header-value", "deny", b"GET /public HTTP/1.1" + H + b"\r\nX-A: a\x00b", 400,
        "CVE-2019-9900"),
    Row("cr-header-value", "deny", b"GET /public HTTP/1.1" + H + b"\r\nX-A: a\rb", 400,
        "CVE-2019-9900"),
    Row("space-header-name", "deny", b"GET /public HTTP/1.1" + H + b"\r\nX A: b", 400,
        "CVE-2023-27491"),
    # -- header values as matched (CVE-2019-18802: surrounding whitespace)
    Row("header-deny", "deny", b"GET /public HTTP/1.1" + H + b"\r\nX-User: root", 403, "control"),
    Row("header-trailing-space", "deny", b"GET /public HTTP/1.1" + H + b"\r\nX-User: root  ", 403,
        "CVE-2019-18802"),
    Row("header-leading-space", "deny", b"GET /public HTTP/1.1" + H + b"\r\nX-User:   root", 403,
        "CVE-2019-18802"),
    # -- Host: case, port, trailing dot, duplicates, absolute-form (CVE-2021-39155)
    Row("host-deny", "deny", b"GET /public HTTP/1.1\r\nHost: secret.example.com", 403, "control"),
    Row("host-case", "deny", b"GET /public HTTP/1.1\r\nHost: SECRET.Example.COM", 403,
        "CVE-2021-39155"),
    Row("host-port", "deny", b"GET /public HTTP/1.1\r\nHost: secret.example.com:8080", 403,
        "Istio hosts match any port"),
    Row("host-trailing-dot", "deny", b"GET /public HTTP/1.1\r\nHost: secret.example.com.", 403,
        "Envoy strip_trailing_host_dot"),
    Row("host-duplicate", "deny", b"GET /public HTTP/1.1" + H + b"\r\nHost: secret.example.com",
        400, "RFC 9112 3.2"),
    Row("host-missing", "deny", b"GET /public HTTP/1.1", 400, "RFC 9112 3.2"),
    Row("host-missing-http10", "deny", b"GET /public HTTP/1.0", 200, "RFC 9112 3.2",
        path="/public", host=""),
    Row("host-userinfo", "deny", b"GET /public HTTP/1.1\r\nHost: a@secret.example.com", 400,
        "RFC 9110 4.2.4", stricter="userinfo in Host refused"),
    Row("host-comma", "deny", b"GET /public HTTP/1.1" + H + b",secret", 400, "RFC 9112 3.2",
        stricter="a comma in Host refused (duplicates arrive joined)"),
    Row("absolute-denied-host", "deny", b"GET http://secret.example.com/public HTTP/1.1" + H, 403,
        "RFC 9112 3.2.2"),
    Row("absolute-upper-scheme", "deny", b"GET HTTP://secret.example.com/public HTTP/1.1" + H, 403,
        "RFC 9112 3.2.2"),
    Row("absolute-replaces-host", "deny",
        b"GET http://api.example.com/public HTTP/1.1\r\nHost: secret.example.com", 200,
        "RFC 9112 3.2.2", path="/public"),
    Row("absolute-dots", "deny", b"GET http://api.example.com/x/../admin HTTP/1.1" + H, 403,
        "RFC 9112 3.2.2"),
    Row("absolute-no-path", "deny", b"GET http://api.example.com HTTP/1.1" + H, 200,
        "RFC 9112 3.2.2", path="/"),
    Row("absolute-userinfo", "deny", b"GET http://u@secret.example.com/public HTTP/1.1" + H, 400,
        "RFC 9110 4.2.4", stricter="userinfo in the target refused"),
    Row("asterisk-form", "deny", b"OPTIONS * HTTP/1.1" + H, 400, "RFC 9112 3.2.4",
        stricter="OPTIONS * refused"),
    Row("allow-host", "allow", b"GET /public/x HTTP/1.1" + H, 200, "control", path="/public/x"),
    Row("allow-host-case-port", "allow", b"GET /public HTTP/1.1\r\nHost: API.example.com:80", 200,
        "CVE-2021-39155", path="/public", host="API.example.com:80"),
    Row("allow-other-host", "allow", b"GET /public HTTP/1.1\r\nHost: other.example.com", 403,
        "control"),
    Row("allow-absolute-host", "allow",
        b"GET http://api.example.com/public HTTP/1.1\r\nHost: other.example.com", 200,
        "RFC 9112 3.2.2", path="/public"),
    Row("allow-absolute-other", "allow", b"GET http://other.example.com/public HTTP/1.1" + H, 403,
        "RFC 9112 3.2.2"),
    Row("allow-dots-escape", "allow", b"GET /public/../admin HTTP/1.1" + H, 403, "CVE-2019-9901"),
    Row("allow-encoded-dots", "allow", b"GET /public/%2e%2e/admin HTTP/1.1" + H, 403,
        "CVE-2019-9901"),
    # -- framing (request smuggling; Envoy's codec)
    Row("cl-and-te", "deny",
        b"POST /public HTTP/1.1" + H + b"\r\nContent-Length: 5\r\nTransfer-Encoding: chunked", 400,
        "RFC 9112 6.1", body=b"0\r\n\r\n"),
    Row("cl-conflict", "deny", b"POST /public HTTP/1.1" + H + b"\r\nContent-Length: 1, 2", 400,
        "RFC 9112 6.3"),
    Row("cl-sign", "deny", b"POST /public HTTP/1.1" + H + b"\r\nContent-Length: +1", 400,
        "RFC 9112 6.3", body=b"x"),
    Row("te-not-chunked", "deny",
        b"POST /public HTTP/1.1" + H + b"\r\nTransfer-Encoding: gzip, chunked", 400,
        "RFC 9112 6.1", stricter="Envoy answers 501", body=b"0\r\n\r\n"),
    Row("te-chunked-ok", "deny", b"POST /public HTTP/1.1" + H + b"\r\nTransfer-Encoding: chunked",
        200, "control", path="/public", body=b"0\r\n\r\n"),
    # -- JWT location tricks (RequestAuthentication)
    Row("jwt-none", "jwt", b"GET /admin HTTP/1.1" + H, 403, "requestPrincipals", grpc=True),
    Row("jwt-header", "jwt", b"GET /admin HTTP/1.1" + H + b"\r\nAuthorization: Bearer {TOKEN}",
        200, "Istio default location", path="/admin", grpc=True),
    Row("jwt-query", "jwt", b"GET /admin?access_token={TOKEN} HTTP/1.1" + H, 200,
        "Istio default location", path="/admin"),
    Row("jwt-expired", "jwt", b"GET /admin HTTP/1.1" + H + b"\r\nAuthorization: Bearer {EXPIRED}",
        401, "jwt_authn", grpc=True),
    Row("jwt-forged", "jwt", b"GET /admin HTTP/1.1" + H + b"\r\nAuthorization: Bearer {FORGED}",
        401, "jwt_authn", grpc=True),
    Row("jwt-forged-public", "jwt",
        b"GET /public HTTP/1.1" + H + b"\r\nAuthorization: Bearer {FORGED}", 401,
        "an invalid token is refused even where none is needed", grpc=True),
    Row("jwt-query-forged", "jwt", b"GET /public?access_token={FORGED} HTTP/1.1" + H, 401,
        "jwt_authn"),
    Row("jwt-other-header", "jwt", b"GET /admin HTTP/1.1" + H + b"\r\nX-Jwt: {TOKEN}", 403,
        "not a configured location", grpc=True),
    Row("jwt-no-prefix", "jwt", b"GET /admin HTTP/1.1" + H + b"\r\nAuthorization: {TOKEN}", 403,
        "Bearer prefix required", grpc=True),
    Row("jwt-dots-to-admin", "jwt",
        b"GET /public/../admin HTTP/1.1" + H + b"\r\nAuthorization: Bearer {FORGED}", 401,
        "jwt_authn"),
    Row("jwt-encoded-admin", "jwt", b"GET /public/%2e%2e/admin HTTP/1.1" + H, 403,
        "CVE-2019-9901"),
    # -- a JWTRule without issuer (istio/istio#56158): its keys, any `iss`
    Row("jwt-any-iss-public", "jwt",
        b"GET /public HTTP/1.1" + H + b"\r\nAuthorization: Bearer {ANY_ISS}", 200,
        "JWTRule without issuer", path="/public", grpc=True),
    Row("jwt-any-iss-admin", "jwt",
        b"GET /admin HTTP/1.1" + H + b"\r\nAuthorization: Bearer {ANY_ISS}", 403,
        "the principal is the token's own iss/sub", grpc=True),
    Row("jwt-any-key-named-iss", "jwt",
        b"GET /admin HTTP/1.1" + H + b"\r\nAuthorization: Bearer {ANY_KEY}", 200,
        "Envoy requires_any: the issuer-less rule's keys verify it", path="/admin", grpc=True),
]
# fmt: on
