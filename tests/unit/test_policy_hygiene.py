"""The request hygiene step on its own: the cases the socket-level decision
table cannot send (HTTP/2 pseudo-headers, what a lenient server might pass)."""

from __future__ import annotations

import pytest

from proxyless_mesh.policy import InboundRequest, MalformedRequestError, PolicySet
from proxyless_mesh.policy._hygiene import request_hygiene

HOST = {"host": "api.example.com"}


@pytest.mark.parametrize(
    ("method", "ok"),
    [("GET", True), ("M-SEARCH", True), ("delete", False), ("DeLeTe", False), ("FOO", False),
     ("GET ", False), ("", False), ("G\u0130T", False)],
)  # fmt: skip
def test_methods(method: str, ok: bool) -> None:
    if ok:
        assert request_hygiene(method, b"/", HOST) == (b"/", None)
    else:
        with pytest.raises(MalformedRequestError):
            request_hygiene(method, b"/", HOST)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/a?b", (b"/a?b", None)),
        (b"http://h.example:81/a?b", (b"/a?b", "h.example:81")),
        (b"HTTPS://h.example", (b"/", "h.example")),
        (b"http://h.example?q", (b"/?q", "h.example")),
        (b"http://[::1]:8/x", (b"/x", "[::1]:8")),
    ],
)
def test_targets_reduced_to_origin_form(target: bytes, expected: tuple[bytes, str]) -> None:
    assert request_hygiene("GET", target, HOST) == expected


@pytest.mark.parametrize(
    "target",
    [b"*", b"h.example:443", b"ftp://h/x", b"http:///x", b"http://u@h/x", b"/a\tb", b"/a\x7f",
     b"http://h,i/x", b"a/b"],
)  # fmt: skip
def test_targets_refused(target: bytes) -> None:
    with pytest.raises(MalformedRequestError):
        request_hygiene("GET", target, HOST)


@pytest.mark.parametrize(
    ("headers", "version", "ok"),
    [
        ({}, "1.1", False),  # HTTP/1.1 needs a Host
        ({}, "1.0", True),
        ({}, "2", True),
        ({":authority": "a", "host": "a"}, "2", True),
        ({":authority": "a", "host": "b"}, "2", False),
        ({":authority": "a", "x-b": "c"}, "2", True),  # the one pseudo-header allowed
        ({"host": "a", ":path": "/x"}, "2", False),
        ({"host": "a", "bad name": "x"}, "1.1", False),
        ({"host": "a", "x": "a\nb"}, "1.1", False),
        ({"host": "a b"}, "1.1", False),
        ({"host": "a", "content-length": "5, 5"}, "1.1", True),  # repeats that agree
        ({"host": "a", "content-length": "5, 6"}, "1.1", False),
        ({"host": "a", "content-length": "\u0665"}, "1.1", False),  # a non-ASCII digit
        ({"host": "a", "transfer-encoding": "Chunked"}, "1.1", True),
        ({"host": "a", "transfer-encoding": "chunked, chunked"}, "1.1", False),
    ],
)
def test_headers(headers: dict[str, str], version: str, ok: bool) -> None:
    if ok:
        request_hygiene("GET", b"/", headers, version)
    else:
        with pytest.raises(MalformedRequestError):
            request_hygiene("GET", b"/", headers, version)


def test_the_policy_judges_the_absolute_form_authority() -> None:
    """PolicySet.check runs the step first: a refusal is a 400 with the reason,
    an absolute-form target's authority is the host matched and handed on."""
    policies = PolicySet()
    refused = policies.check(InboundRequest("delete", b"/x", HOST))
    assert refused.status == 400 and "DELETE" in refused.reason
    allowed = policies.check(InboundRequest("GET", b"http://Other.example/x?q", HOST))
    assert (allowed.status, allowed.path, allowed.query) == (200, "/x", "q")
    assert allowed.authority == "Other.example"
