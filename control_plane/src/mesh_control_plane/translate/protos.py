"""Small protobuf building blocks shared by the resource builders."""

from __future__ import annotations

from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

ROUTER_FILTER = "envoy.filters.http.router"
FAULT_FILTER = "envoy.filters.http.fault"
HCM_FILTER = "envoy.filters.network.http_connection_manager"


def pack(message: Message) -> any_pb2.Any:
    """Any with deterministic bytes, so equal inputs serialize identically."""
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed


def ads_config_source() -> config_source_pb2.ConfigSource:
    """``{ads: {}, resource_api_version: V3}``: the only source gRPC accepts besides self."""
    source = config_source_pb2.ConfigSource(resource_api_version=config_source_pb2.V3)
    source.ads.SetInParent()
    return source


def router_filter() -> hcm_pb2.HttpFilter:
    """The router filter; both gRPC and Envoy require it last in the chain."""
    return hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router()))


def fault_filter() -> hcm_pb2.HttpFilter:
    """The fault filter with an empty HTTPFault: it injects nothing by itself and
    applies what a route's ``typed_per_filter_config`` says (gRFC A33, Envoy)."""
    return hcm_pb2.HttpFilter(name=FAULT_FILTER, typed_config=pack(fault_pb2.HTTPFault()))


def rds_connection_manager(
    route_config_name: str, stat_prefix: str = ""
) -> hcm_pb2.HttpConnectionManager:
    """An HttpConnectionManager that fetches its routes over ADS by name; its
    filters are the fault filter (always there, so any route may inject faults)
    and the router, last."""
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        rds=hcm_pb2.Rds(config_source=ads_config_source(), route_config_name=route_config_name),
        http_filters=[fault_filter(), router_filter()],
    )


def duration(seconds: float) -> duration_pb2.Duration:
    """Seconds as a Duration, rounded to the nanosecond (floats are not exact)."""
    total_nanos = round(seconds * 1_000_000_000)
    whole, nanos = divmod(total_nanos, 1_000_000_000)
    return duration_pb2.Duration(seconds=whole, nanos=nanos)
