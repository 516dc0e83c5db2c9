"""The access-log format knob: Istio's text (default) or JSON keys, to a
logger or standard output; anything else is refused by name."""

from __future__ import annotations

import json

import pytest

from proxyless_mesh.telemetry import Telemetry, TelemetryConfig


def test_unknown_format_is_refused_by_field() -> None:
    with pytest.raises(ValueError, match="access_log_format: 'xml'"):
        TelemetryConfig(access_log_format="xml")


def _one_line(config: TelemetryConfig) -> None:
    telemetry = Telemetry(config)
    call = telemetry.call("source", "http", "POST", "reviews.shop.mesh:9080", "/r")
    assert call is not None
    call.request_bytes, call.response_bytes = 3, 7
    call.finish(503, ("UH",))


def test_text_to_stdout_by_default_format(capsys: pytest.CaptureFixture[str]) -> None:
    _one_line(TelemetryConfig(access_log=True, access_log_stdout=True, tracing=False))
    line = capsys.readouterr().out
    assert line.startswith("[") and line.endswith(" - -\n")  # no SNI, no route: unset
    assert '"POST /r HTTP/1.1" 503 UH no_healthy_upstream - "-" 3 7 ' in line


def test_json_has_istios_keys_and_types(capsys: pytest.CaptureFixture[str]) -> None:
    _one_line(
        TelemetryConfig(
            access_log=True, access_log_stdout=True, access_log_format="json", tracing=False
        )
    )
    record = json.loads(capsys.readouterr().out)
    assert record["response_code"] == 503 and record["bytes_sent"] == 7
    assert record["response_flags"] == "UH" and record["method"] == "POST"
    assert record["route_name"] is None and isinstance(record["duration"], int)
