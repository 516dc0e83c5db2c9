"""benchmarks/eds_metadata.py measures what it says: the bytes the telemetry
metadata adds are the encoded size of each endpoint's `metadata` field (tag,
length, message), and the table it prints carries its rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from envoy.config.core.v3 import base_pb2

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

from eds_metadata import measure  # noqa: E402


def varint_size(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def test_growth_is_each_endpoints_encoded_metadata() -> None:
    n = 300
    for kind in ("entry", "group", "inline"):
        growth = measure(kind, n)
        metadata = base_pb2.Metadata()
        metadata.filter_metadata["istio"].fields["workload"].string_value = growth.metadata
        size = metadata.ByteSize()
        field = 1 + varint_size(size) + size  # LbEndpoint.metadata: tag, length, message
        per = growth.per_endpoint(n)
        # `growth.metadata` is the first endpoint's: WorkloadEntry names grow
        # to 2 more digits (reviews-vm-299); an LbEndpoint's own length prefix
        # may grow by a byte
        slack = 3 if kind == "entry" else 1
        assert field <= per <= field + slack, (kind, per, field)
        assert growth.metadata.endswith(";reviews;v1;Kubernetes")


def test_table_names_every_kind() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "eds_metadata.py"), "--endpoints", "50"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for row in ("| WorkloadEntries |", "| WorkloadGroup members |", "| inline ServiceEntry"):
        assert row in out, out
