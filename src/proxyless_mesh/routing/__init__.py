"""Request -> route -> weighted cluster choice (Envoy's route semantics)."""

from proxyless_mesh.routing._cors import cors
from proxyless_mesh.routing._matching import (
    HeaderLookup,
    compile_header_matcher,
    mapping_lookup,
)
from proxyless_mesh.routing._table import (
    CompiledRoute,
    RouteDecision,
    RouteTable,
    compile_virtual_host,
    find_virtual_host,
)

__all__ = [
    "CompiledRoute",
    "HeaderLookup",
    "RouteDecision",
    "RouteTable",
    "compile_header_matcher",
    "compile_virtual_host",
    "cors",
    "find_virtual_host",
    "mapping_lookup",
]
