"""Path and host normalization, per Istio pathNormalization mode."""

from __future__ import annotations

import pytest

from proxyless_mesh.policy import MalformedRequestError, PathNormalization, normalize_host
from proxyless_mesh.policy._normalize import app_path, normalize_path, split_target

BASE = PathNormalization.BASE
MERGE = PathNormalization.MERGE_SLASHES
DECODE = PathNormalization.DECODE_AND_MERGE_SLASHES
NONE = PathNormalization.NONE


@pytest.mark.parametrize(
    ("raw", "mode", "want"),
    [
        (b"/a/../b", BASE, "/b"),
        (b"/a/./b", BASE, "/a/b"),
        (b"/admin/.", BASE, "/admin/"),
        (b"/admin/..", BASE, "/"),
        (b"/../../admin", BASE, "/admin"),
        (b"/%2e%2e/admin", BASE, "/admin"),
        (b"/x/.%2E/admin", BASE, "/admin"),
        (b"\\admin", BASE, "/admin"),
        (b"/a\\..\\admin", BASE, "/admin"),
        (b"//admin", BASE, "//admin"),
        (b"//admin", MERGE, "/admin"),
        (b"/a//b///c", MERGE, "/a/b/c"),
        (b"/a%2fb", DECODE, "/a/b"),
        (b"/a%2F%2Fb", DECODE, "/a/b"),
        (b"/x/..%2Fadmin", DECODE, "/admin"),
        (b"/x%5C..%5Cadmin", DECODE, "/admin"),
        (b"/%61dmin", BASE, "/admin"),
        (b"/%7euser", BASE, "/~user"),
        (b"/a%3fb", BASE, "/a%3Fb"),
        (b"/%252e%252e/admin", BASE, "/%252e%252e/admin"),
        (b"/a b", BASE, "/a%20b"),
        (b"/caf\xc3\xa9", BASE, "/caf%C3%A9"),
        (b"/admin;x", BASE, "/admin;x"),
        (b"/ADMIN", BASE, "/ADMIN"),
        (b"", BASE, "/"),
        (b"/a/../b", NONE, "/a/../b"),
        (b"//a", NONE, "//a"),
    ],
)
def test_normalize_path(raw: bytes, mode: PathNormalization, want: str) -> None:
    assert normalize_path(raw, mode) == want


@pytest.mark.parametrize(
    ("raw", "mode"),
    [
        (b"/admin%00", BASE),
        (b"/admin%00", DECODE),
        (b"/admin%zz", BASE),
        (b"/admin%", BASE),
        (b"/admin%4", BASE),
        (b"/admin\x01", BASE),
        (b"/admin\x7f", NONE),
        (b"/a%2Fb", BASE),  # the app would see /a/b: refused unless decoded for the policy
        (b"/a%5cb", MERGE),
        (b"/a%2fb", NONE),
        (b"admin", BASE),
    ],
)
def test_unsafe_paths_are_refused(raw: bytes, mode: PathNormalization) -> None:
    with pytest.raises(MalformedRequestError):
        normalize_path(raw, mode)


def test_split_target_drops_fragment_and_keeps_query() -> None:
    assert split_target(b"/admin?x=1#frag") == (b"/admin", b"x=1")
    assert split_target(b"/admin#x?y") == (b"/admin", b"")
    assert split_target(b"/public?/../admin") == (b"/public", b"/../admin")


def test_app_path_is_the_decoded_normalized_path() -> None:
    assert app_path(normalize_path(b"/%252e/x")) == b"/%2e/x"
    assert app_path(normalize_path(b"/a%20b")) == b"/a b"


@pytest.mark.parametrize(
    ("authority", "want"),
    [
        ("Secret.COM:80", "secret.com"),
        ("secret.com.", "secret.com"),
        ("SECRET.com.:8443", "secret.com"),
        ("[::1]:8080", "[::1]"),
        ("10.0.0.1:80", "10.0.0.1"),
        ("", ""),
    ],
)
def test_normalize_host(authority: str, want: str) -> None:
    assert normalize_host(authority) == want
