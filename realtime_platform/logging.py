"""Log formatting: JSON in production, readable text in development; secrets masked in both."""

from __future__ import annotations

import logging
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from realtime_platform.context import request_id_var, tenant_id_var
from realtime_platform.redaction import redact_text


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id and tenant id (or '-')."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.tenant_id = tenant_id_var.get()
        return True


class RedactingTextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


class RedactingJsonFormatter(JsonFormatter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("timestamp", True)
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        super().__init__("%(levelname)s %(name)s %(message)s %(request_id)s %(tenant_id)s", *args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))
