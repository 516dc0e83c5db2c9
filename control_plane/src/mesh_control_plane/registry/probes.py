"""Readiness probes the control plane runs against self-registered workloads.

HTTP GET (2xx/3xx is ready, as Kubernetes), TCP connect, and gRPC health
(`grpc.health.v1.Health/Check` answering SERVING). Each is bounded by the probe's
timeout, so a hung workload is "not ready", never a hung control plane. The gRPC
check is encoded by hand (two tiny messages) rather than pulling in
grpcio-health-checking for one call.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import httpx

from mesh_control_plane.registry.workload_group import Probe

log = logging.getLogger(__name__)

__all__ = ["run_probe"]

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_SERVING = 1


async def run_probe(probe: Probe, address: str) -> bool:
    """True when the workload at `address` passes `probe` within its timeout."""
    try:
        async with asyncio.timeout(probe.timeout):
            if probe.kind == "http":
                return await _http(address, probe)
            if probe.kind == "grpc":
                return await _grpc(address, probe)
            return await _tcp(address, probe.port)
    except (TimeoutError, OSError, httpx.HTTPError, grpc.aio.AioRpcError) as exc:
        log.debug("probe %s %s:%s failed: %r", probe.kind, address, probe.port, exc)
        return False


async def _http(address: str, probe: Probe) -> bool:
    host = f"[{address}]" if ":" in address else address
    path = probe.path if probe.path.startswith("/") else "/" + probe.path
    async with httpx.AsyncClient(timeout=probe.timeout) as client:
        response = await client.get(f"http://{host}:{probe.port}{path}")
    return 200 <= response.status_code < 400


async def _tcp(address: str, port: int) -> bool:
    _, writer = await asyncio.open_connection(address, port)
    writer.close()
    await writer.wait_closed()
    return True


def _encode_request(service: str) -> bytes:
    data = service.encode()
    if not data:
        return b""
    return b"\x0a" + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _decode_status(data: bytes) -> int:
    # HealthCheckResponse { ServingStatus status = 1; }: field 1, varint (tag 0x08).
    if len(data) >= 2 and data[0] == 0x08:
        return data[1]
    return 0  # UNKNOWN


async def _grpc(address: str, probe: Probe) -> bool:
    host = f"[{address}]" if ":" in address else address
    async with grpc.aio.insecure_channel(f"{host}:{probe.port}") as channel:
        check = channel.unary_unary(
            _HEALTH_CHECK,
            request_serializer=_encode_request,
            response_deserializer=_decode_status,
        )
        status = await check(probe.grpc_service, timeout=probe.timeout)
    return bool(status == _SERVING)
