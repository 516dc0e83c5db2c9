"""The errors of the inbound policy core.

They subclass `MeshError` like every library error; the lead may move them
into `proxyless_mesh.errors` (kept here so this package stays self-contained).
"""

from __future__ import annotations

from proxyless_mesh.errors import MeshError


class PolicyConfigError(MeshError, ValueError):
    """An AuthorizationPolicy, RequestAuthentication or RBAC config cannot be
    used. `field` is the dotted path of the offending field (e.g.
    `spec.rules[0].when[1].key`) so the control plane can name it to the
    operator; the policy is rejected as a whole, never partly applied."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UnsupportedPolicyError(PolicyConfigError):
    """The policy uses a field or value the mesh does not enforce (e.g. a CUSTOM
    action, a CEL condition, an unknown `when` key). Rejected rather than
    ignored, because ignoring a condition silently widens or narrows access."""


class MalformedRequestError(MeshError, ValueError):
    """The request path cannot be normalized safely (`%00`, an invalid percent
    escape, control characters, an escaped slash the app would decode
    differently than the policy saw it). Answered with 400, as Envoy does,
    never passed to the app."""
