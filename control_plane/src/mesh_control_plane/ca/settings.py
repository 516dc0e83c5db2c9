"""`CaSettings`: how the operator configured the CA (command line -> here)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from proxyless_mesh.security import DEFAULT_TRUST_DOMAIN

__all__ = ["CA_DIR_ENV", "DEFAULT_LEAF_TTL", "CaSettings", "default_ca_dir"]

CA_DIR_NAME = "mesh-ca"

DEFAULT_LEAF_TTL = 24 * 3600.0
DEFAULT_ROOT_TTL = 3650 * 24 * 3600.0
#: Istio's self-signed root is replaced when 20 % of its life is left
#: (CITADEL_SELF_SIGNED_ROOT_CERT_GRACE_PERIOD_PERCENTILE).
DEFAULT_ROOT_ROTATION_SHARE = 0.2
CA_DIR_ENV = "MESHCTL_CA_DIR"


def default_ca_dir(config_dir: Path) -> Path:
    """$MESHCTL_CA_DIR, else `mesh-ca` beside the config directory
    (/etc/mesh/config -> /etc/mesh/mesh-ca): next to the config it serves, but
    outside the directory the config watcher reads and operators share.
    `meshctl control-plane` and `meshctl token create` compute it the same
    way from --config-dir."""
    explicit = os.environ.get(CA_DIR_ENV)
    if explicit:
        return Path(explicit)
    return Path(config_dir).resolve().parent / CA_DIR_NAME


@dataclass(frozen=True)
class CaSettings:
    """`ca_dir` holds the generated root(s) and the token-signing key (0700 dir,
    0600 files). With `ca_cert` + `ca_key` (+ `ca_chain` when `ca_cert` is an
    intermediate) the operator's CA signs instead of a generated root."""

    ca_dir: Path
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    leaf_ttl: float = DEFAULT_LEAF_TTL
    max_leaf_ttl: float | None = None  # None: leaf_ttl
    ca_cert: Path | None = None
    ca_key: Path | None = None
    ca_chain: Path | None = None
    root_ttl: float = DEFAULT_ROOT_TTL  # a generated root's lifetime
    root_rotation_lead: float | None = None  # rotate this long before expiry; None: 20 %

    @property
    def longest_leaf_ttl(self) -> float:
        return self.max_leaf_ttl if self.max_leaf_ttl is not None else self.leaf_ttl

    @property
    def rotation_lead(self) -> float:
        """How long before a generated root expires its successor is made."""
        if self.root_rotation_lead is not None:
            return self.root_rotation_lead
        return self.root_ttl * DEFAULT_ROOT_ROTATION_SHARE

    def schedule_problem(self) -> str:
        """Why the root lifetime and lead cannot work ("" when they can): the
        successor needs one leaf lifetime to reach every workload before it
        signs, and the old root must outlive the leaves it signed until then."""
        longest, lead = self.longest_leaf_ttl, self.rotation_lead
        if lead >= self.root_ttl:
            return (
                f"the root rotation lead ({lead:g} s) must be shorter than the root's "
                f"life ({self.root_ttl:g} s)"
            )
        if lead < 2 * longest:
            return (
                f"the root rotation lead ({lead:g} s) must be at least twice the longest "
                f"leaf lifetime ({longest:g} s): the new root is trusted one leaf lifetime "
                "before it signs, and the old root's leaves live one more"
            )
        return ""
