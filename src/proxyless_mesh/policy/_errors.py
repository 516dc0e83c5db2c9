"""The errors of the inbound policy core, defined with every other public
error in `proxyless_mesh.errors` and re-exported here for the policy modules."""

from proxyless_mesh.errors import MalformedRequestError, PolicyConfigError, UnsupportedPolicyError

__all__ = ["MalformedRequestError", "PolicyConfigError", "UnsupportedPolicyError"]
