"""Per-request (or per-connection) context that log lines and audit rows pick up.

Context variables work for sync views, async views and Channels consumers alike; each request
or socket sets them on entry, so nothing has to thread a request object through services.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
tenant_id_var: ContextVar[str] = ContextVar("tenant_id", default="-")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def accept_request_id(candidate: str | None) -> str:
    """Keep the caller's request id when it is a sane token, so traces join up; else mint one."""
    if candidate and _VALID_REQUEST_ID.match(candidate):
        return candidate
    return new_request_id()


def current_request_id() -> str | None:
    value = request_id_var.get()
    return None if value == "-" else value
