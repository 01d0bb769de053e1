"""Typed results of upstream REST calls (never raw JSON or SDK objects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClientSecretResult:
    value: str = field(repr=False)  # "ek_…": never log it, never store it in plain text
    expires_at: int  # unix seconds
    session: dict[str, Any]  # the session object exactly as upstream returned it
    request_id: str | None

    @property
    def last_four(self) -> str:
        return self.value[-4:]
