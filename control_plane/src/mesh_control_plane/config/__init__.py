"""Istio YAML configuration: load, validate strictly, cross-check, watch.

`load_config_dir()` turns a directory of networking.istio.io resources into a
`MeshConfig` (model.py) or raises `ConfigLoadError` listing every problem;
`ConfigWatcher` follows the directory and keeps the last good configuration.
"""

from .errors import ConfigError, ConfigLoadError, ConfigProblem
from .loader import config_files, load_config_dir, parse_documents
from .model import (
    ConnectionPool,
    ConsistentHash,
    Destination,
    DestinationRule,
    FaultAbort,
    FaultDelay,
    HeaderOperations,
    Headers,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRetry,
    HTTPRewrite,
    HTTPRoute,
    HTTPRouteDestination,
    LoadBalancerSettings,
    LocalityLbSetting,
    LocalityRule,
    MeshConfig,
    Meta,
    Mirror,
    OutlierDetection,
    PortTrafficPolicy,
    ServiceEntry,
    ServicePort,
    StringMatch,
    Subset,
    TrafficPolicy,
    VirtualService,
    WorkloadEndpoint,
    WorkloadEntry,
)
from .references import check_references
from .syntax import parse_duration
from .watch import ConfigWatcher, directory_signature

__all__ = [
    "ConfigError",
    "ConfigLoadError",
    "ConfigProblem",
    "ConfigWatcher",
    "ConnectionPool",
    "ConsistentHash",
    "Destination",
    "DestinationRule",
    "FaultAbort",
    "FaultDelay",
    "HTTPFaultInjection",
    "HTTPMatchRequest",
    "HTTPRedirect",
    "HTTPRetry",
    "HTTPRewrite",
    "HTTPRoute",
    "HTTPRouteDestination",
    "HeaderOperations",
    "Headers",
    "LoadBalancerSettings",
    "LocalityLbSetting",
    "LocalityRule",
    "MeshConfig",
    "Meta",
    "Mirror",
    "OutlierDetection",
    "PortTrafficPolicy",
    "ServiceEntry",
    "ServicePort",
    "StringMatch",
    "Subset",
    "TrafficPolicy",
    "VirtualService",
    "WorkloadEndpoint",
    "WorkloadEntry",
    "check_references",
    "config_files",
    "directory_signature",
    "load_config_dir",
    "parse_documents",
    "parse_duration",
]
