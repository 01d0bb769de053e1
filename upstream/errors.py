"""The one exception the upstream boundary raises, and the socket's end-of-stream signal.

`UpstreamError` carries what a caller needs to decide and to report: the HTTP status (None for a
timeout or a connection failure), OpenAI's error `type`/`code`/`param`, whether trying again can
help, the upstream `x-request-id` for support tickets, and how long upstream asked us to wait.
Its message never contains a key: upstream masks keys in its own messages, and we never add one.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any


class UpstreamError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retryable: bool | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.retryable = is_retryable_status(status) if retryable is None else retryable
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no response"
        suffix = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.message} [{where}{', code ' + self.code if self.code else ''}]{suffix}"

    def __repr__(self) -> str:
        return (
            f"UpstreamError(status={self.status!r}, type={self.type!r}, code={self.code!r}, "
            f"retryable={self.retryable!r}, request_id={self.request_id!r})"
        )

    def as_error_body(self) -> dict[str, Any]:
        """The error in OpenAI's shape, for handing on to our own callers."""
        return {
            "error": {
                "message": self.message,
                "type": self.type or ("server_error" if self.retryable else "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }


class UpstreamClosed(Exception):
    """The upstream socket ended: `code` is the WebSocket close code (None if the connection dropped
    without a close frame), `reason` the close reason."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"upstream socket closed (code {code}{', ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


def is_retryable_status(status: int | None) -> bool:
    """429, 5xx, and no status at all (timeout, connection failure) can succeed on a later try."""
    if status is None:
        return True
    return status == 429 or status >= 500


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI's) or `retry-after` (seconds or an HTTP date)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = -1
        if value >= 0:
            return value
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if seconds == seconds else None  # NaN guard
