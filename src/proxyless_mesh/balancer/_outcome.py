"""What happened to one request on one endpoint, as outlier detection sees it."""

from __future__ import annotations

import enum

_GATEWAY = frozenset({502, 503, 504})


class Outcome(enum.Enum):
    """Envoy's result classes for passive health checking.

    HTTP_5XX is a non-gateway 5xx (500, 501, 505...); GATEWAY_ERROR is 502,
    503 or 504; LOCAL_ORIGIN_FAILURE means the client got no answer at all
    (connect failure, reset, timeout). Any other status is a SUCCESS for
    outlier detection, 4xx included (Envoy counts only 5xx)."""

    SUCCESS = "success"
    HTTP_5XX = "http_5xx"
    GATEWAY_ERROR = "gateway_error"
    LOCAL_ORIGIN_FAILURE = "local_origin_failure"

    @classmethod
    def of_status(cls, status: int) -> Outcome:
        """The outcome of a response with HTTP status `status`."""
        if status in _GATEWAY:
            return cls.GATEWAY_ERROR
        if 500 <= status <= 599:
            return cls.HTTP_5XX
        return cls.SUCCESS
