"""The control plane's CA: roots and their rotation, join tokens, and the gRPC
certificate-signing service workloads call for their SPIFFE certificates."""

from mesh_control_plane.ca.authority import CaError, CertificateAuthority, RootRecord
from mesh_control_plane.ca.durations import format_duration, parse_duration
from mesh_control_plane.ca.service import CaServer, CertificateService, Refusal
from mesh_control_plane.ca.settings import (
    CA_DIR_ENV,
    DEFAULT_LEAF_TTL,
    CaSettings,
    default_ca_dir,
)
from mesh_control_plane.ca.tokens import TOKEN_KEY_FILE, TokenAuthority, TokenError

__all__ = [
    "CA_DIR_ENV",
    "DEFAULT_LEAF_TTL",
    "TOKEN_KEY_FILE",
    "CaError",
    "CaServer",
    "CaSettings",
    "CertificateAuthority",
    "CertificateService",
    "Refusal",
    "RootRecord",
    "TokenAuthority",
    "TokenError",
    "default_ca_dir",
    "format_duration",
    "parse_duration",
]
