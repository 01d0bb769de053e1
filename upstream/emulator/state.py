"""What one emulator instance knows: its settings, the keys it accepts, the `ek_` secrets it minted,
and (for tests) a record of the requests and sockets it served."""

from __future__ import annotations

import random
import secrets
import string
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

_ALPHANUMERIC = string.ascii_letters + string.digits
_ids = random.Random()  # noqa: S311  ids need to be unique, not unguessable (ek_ values use `secrets`)


def new_id(prefix: str) -> str:
    """`sess_`, `event_`, `item_`, `resp_`, `conv_`… + 21 alphanumerics, as upstream's ids look."""
    return f"{prefix}_{''.join(_ids.choices(_ALPHANUMERIC, k=21))}"


def new_request_id() -> str:
    return f"req_{secrets.token_hex(16)}"


def new_client_secret() -> str:
    return f"ek_{secrets.token_hex(16)}"


@dataclass
class EmulatorConfig:
    """Knobs tests may turn. Defaults behave like the real service."""

    max_session_seconds: float = 3600.0  # upstream's 60-minute cap
    # None: stream response audio as fast as possible (upstream is faster than real time too);
    # 1.0: pace audio deltas at real time, 10.0: ten times faster than real time.
    realtime_factor: float | None = None
    timer_scale: float = 1.0  # multiplies the idle timeout (idle_timeout_ms), so tests need not wait
    words_per_second: float = 2.5  # speaking rate of the emulated voice
    rate_limit_requests: int = 5000
    rate_limit_tokens: int = 400_000
    record: bool = False  # keep requests and socket frames in memory (tests); off when embedded
    max_body_bytes: int = 1024 * 1024


@dataclass
class MintedSecret:
    value: str = field(repr=False)
    expires_at: int
    session: dict[str, Any]  # the effective session config the secret carries (no id/object)
    created_at: float = field(default_factory=time.time)
    sessions_opened: int = 0


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased; authorization masked
    body: bytes
    status: int = 0
    request_id: str = ""
    auth: str | None = None  # "api_key", "ephemeral" or None (refused)

    def json(self) -> Any:
        import json

        return json.loads(self.body)


@dataclass
class RecordedConnection:
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased; authorization masked
    subprotocols: list[str]
    auth: str | None = None
    session_id: str | None = None
    received: list[str | bytes] = field(default_factory=list)  # client frames, as received
    sent: list[str] = field(default_factory=list)  # server frames, as sent
    close_code: int | None = None  # the code the emulator closed with, if it closed first
    closed: threading.Event = field(default_factory=threading.Event)

    def received_events(self) -> list[dict[str, Any]]:
        import json

        events = []
        for frame in self.received:
            try:
                event = json.loads(frame)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def sent_events(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(frame) for frame in self.sent if frame.startswith("{") and frame.endswith("}")]


def mask_key(value: str) -> str:
    """As upstream shows keys in errors: enough to recognise, never enough to use."""
    if len(value) <= 8:
        return "*" * len(value)
    return f"{value[:3]}{'*' * 8}{value[-4:]}"


class EmulatorState:
    def __init__(self, *, api_keys: set[str], config: EmulatorConfig) -> None:
        self.api_keys = set(api_keys)
        self.config = config
        self._lock = threading.Lock()
        self._secrets: dict[str, MintedSecret] = {}
        self._last_purge = time.time()
        self.requests: deque[RecordedRequest] = deque(maxlen=1000)
        self.connections: deque[RecordedConnection] = deque(maxlen=1000)
        self._window_start = time.monotonic()
        self._requests_used = 0
        self._tokens_used = 0

    # --- credentials --------------------------------------------------------------------------

    def authenticate(
        self, key: str | None, *, allow_ephemeral: bool
    ) -> tuple[str | None, MintedSecret | None]:
        """("api_key", None), ("ephemeral", secret), or (None, None) for anything else."""
        if not key:
            return None, None
        if key in self.api_keys:
            return "api_key", None
        if allow_ephemeral and key.startswith("ek_"):
            with self._lock:
                secret = self._secrets.get(key)
            if secret is not None and secret.expires_at > time.time():
                return "ephemeral", secret
        return None, None

    def is_expired_secret(self, key: str | None) -> bool:
        with self._lock:
            secret = self._secrets.get(key or "")
        return secret is not None and secret.expires_at <= time.time()

    def mint(self, *, session: dict[str, Any], ttl_seconds: int) -> MintedSecret:
        now = time.time()
        secret = MintedSecret(value=new_client_secret(), expires_at=int(now) + ttl_seconds, session=session)
        with self._lock:
            if now - self._last_purge > 60:
                # forget secrets that expired over an hour ago, so a long-running server stays small
                self._last_purge = now
                for value in [v for v, s in self._secrets.items() if s.expires_at < now - 3600]:
                    del self._secrets[value]
            self._secrets[secret.value] = secret
        return secret

    def secret(self, value: str) -> MintedSecret | None:
        with self._lock:
            return self._secrets.get(value)

    @property
    def minted(self) -> list[MintedSecret]:
        with self._lock:
            return list(self._secrets.values())

    # --- rate limits (one window shared by every connection, like an organisation's) ----------

    def rate_limits(self, *, requests: int = 0, tokens: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            elapsed = time.monotonic() - self._window_start
            if elapsed >= 60:
                self._window_start, elapsed = time.monotonic(), 0.0
                self._requests_used = self._tokens_used = 0
            self._requests_used += requests
            self._tokens_used += tokens
            reset = round(max(0.001, 60.0 - elapsed), 3)
            return [
                {
                    "name": "requests",
                    "limit": self.config.rate_limit_requests,
                    "remaining": max(0, self.config.rate_limit_requests - self._requests_used),
                    "reset_seconds": float(reset),
                },
                {
                    "name": "tokens",
                    "limit": self.config.rate_limit_tokens,
                    "remaining": max(0, self.config.rate_limit_tokens - self._tokens_used),
                    "reset_seconds": float(reset),
                },
            ]
