"""The public surface is exactly what `__all__` says, sorted, all importable."""

from __future__ import annotations

import proxyless_mesh


def test_all_is_sorted_and_importable() -> None:
    names = proxyless_mesh.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(proxyless_mesh, name) is not None


def test_every_public_error_is_a_mesh_error_and_documented() -> None:
    errors = [getattr(proxyless_mesh, n) for n in proxyless_mesh.__all__ if n.endswith("Error")]
    assert errors
    for error in errors:
        assert issubclass(error, proxyless_mesh.MeshError)
        assert error.__doc__ and len(error.__doc__) > 40, error
