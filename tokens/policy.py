"""A tenant's session policy, applied to a validated client-secret request.

Pure functions over plain values (no database), so every rule is tested directly. The rules, in
the order they run (the first violation answers, as a 400 naming the offending `param`):

1. **Locked fields** (`locked_fields`, dotted paths inside `session`, e.g. `instructions` or
   `audio.output.voice`): a request that sets one is refused (`locked_parameter`). What the
   session then gets is the policy's value (below) or the upstream default.
2. **Model** (realtime sessions): must be in `allowed_models` when that list is not empty
   (`model_not_allowed`); when the request names none, the first allowed model is used, or
   `gpt-realtime`. Transcription sessions have no model and are not restricted by this list.
3. **Voice**: must be in `allowed_voices` when that list is not empty (`voice_not_allowed`;
   a custom voice `{"id": …}` is matched by its id); when the request names none, the first
   allowed voice is set, so the upstream default can never slip past the list.
4. **Tools**: when `tool_allowlist` is a list, every function tool (by `name`) and MCP tool (by
   `server_label`) must be on it, and so must a forced `tool_choice` (`tool_not_allowed`).
5. **Instructions prefix**: prepended to the client's instructions (blank line between), or the
   instructions when the client sent none. Clients cannot remove it.
6. **max_output_tokens ceiling**: a larger value, `"inf"` or no value becomes the ceiling
   (clamped silently: a ceiling is enforced, not negotiated).
7. **TTL** (`expires_after.seconds`, default: the policy's `ttl_default_seconds`, not OpenAI's
   600): bounded by the policy's minimum and maximum and the plan's `secret_ttl_max_seconds`.
   In `clamp` mode a value outside is moved to the nearest bound (the response's `expires_at`
   shows it); in `reject` mode it is a 400 (`integer_below_min_value`/`integer_above_max_value`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from realtime_platform.errors import BadRequest

DEFAULT_MODEL = "gpt-realtime"
OPENAI_TTL_MIN, OPENAI_TTL_MAX = 10, 7200


@dataclass(frozen=True)
class PolicyView:
    """What issuance needs from a tenant's SessionPolicy, plan and limits, as plain values."""

    secret_kind: str
    allowed_models: tuple[str, ...] = ()
    allowed_voices: tuple[str, ...] = ()
    ttl_default_seconds: int = 60
    ttl_min_seconds: int = 10
    ttl_max_seconds: int = 600
    ttl_mode: str = "clamp"
    instructions_prefix: str = ""
    tool_allowlist: tuple[str, ...] | None = None
    max_output_tokens_ceiling: int | None = None
    locked_fields: tuple[str, ...] = ()
    relay_single_use: bool = True
    max_session_seconds: int = 1800
    session_cost_ceiling_usd: Decimal | None = None
    plan_ttl_max_seconds: int = OPENAI_TTL_MAX
    plan_max_session_seconds: int | None = None


@dataclass(frozen=True)
class IssuancePlan:
    """The effective secret to issue: what was asked, after the policy."""

    kind: str
    session: dict[str, Any]  # request-shaped: exactly what a session.update / upstream body carries
    model: str
    ttl_seconds: int
    ttl_requested: int
    single_use: bool
    max_session_seconds: int
    cost_ceiling_usd: Decimal | None
    adjustments: tuple[str, ...] = field(default=())

    @property
    def upstream_body(self) -> dict[str, Any]:
        return {
            "expires_after": {"anchor": "created_at", "seconds": self.ttl_seconds},
            "session": self.session,
        }


def _strip_session_prefix(path: str) -> str:
    return path[len("session.") :] if path.startswith("session.") else path


def _has_path(data: dict[str, Any], dotted: str) -> bool:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _voice_name(voice: Any) -> str | None:
    if isinstance(voice, str):
        return voice
    if isinstance(voice, dict) and isinstance(voice.get("id"), str):
        return str(voice["id"])
    return None


def _check_locked(session: dict[str, Any], policy: PolicyView) -> None:
    for locked in policy.locked_fields:
        path = _strip_session_prefix(locked)
        if path and path != "type" and _has_path(session, path):
            raise BadRequest(
                f"The 'session.{path}' setting is fixed by this organization's policy and cannot be set "
                "by the client.",
                code="locked_parameter",
                param=f"session.{path}",
            )


def _apply_model(session: dict[str, Any], policy: PolicyView, adjustments: list[str]) -> str:
    model = session.get("model")
    if model is None:
        model = policy.allowed_models[0] if policy.allowed_models else DEFAULT_MODEL
        session["model"] = model
        adjustments.append("model_defaulted")
    elif policy.allowed_models and model not in policy.allowed_models:
        raise BadRequest(
            f"The model '{model}' is not allowed for this organization. Allowed models: "
            f"{', '.join(policy.allowed_models)}.",
            code="model_not_allowed",
            param="session.model",
        )
    return str(model)


def _apply_voice(session: dict[str, Any], policy: PolicyView, adjustments: list[str]) -> None:
    if not policy.allowed_voices:
        return
    audio = session.get("audio") or {}
    output = audio.get("output") or {}
    if output.get("voice") is not None:
        name = _voice_name(output["voice"])
        if name not in policy.allowed_voices:
            raise BadRequest(
                f"The voice '{name}' is not allowed for this organization. Allowed voices: "
                f"{', '.join(policy.allowed_voices)}.",
                code="voice_not_allowed",
                param="session.audio.output.voice",
            )
        return
    output["voice"] = policy.allowed_voices[0]
    audio["output"] = output
    session["audio"] = audio
    adjustments.append("voice_defaulted")


def _tool_not_allowed(name: Any, param: str) -> BadRequest:
    return BadRequest(
        f"The tool '{name}' is not allowed for this organization.", code="tool_not_allowed", param=param
    )


def _apply_tools(session: dict[str, Any], policy: PolicyView) -> None:
    if policy.tool_allowlist is None:
        return
    allowed = set(policy.tool_allowlist)
    for index, tool in enumerate(session.get("tools") or []):
        if tool.get("type") == "mcp":
            if tool.get("server_label") not in allowed:
                raise _tool_not_allowed(tool.get("server_label"), f"session.tools.{index}.server_label")
        elif tool.get("name") not in allowed:
            raise _tool_not_allowed(tool.get("name"), f"session.tools.{index}.name")
    choice = session.get("tool_choice")
    if isinstance(choice, dict):
        name = choice.get("name") if choice.get("type") == "function" else choice.get("server_label")
        if name not in allowed:
            field_name = "name" if choice.get("type") == "function" else "server_label"
            raise _tool_not_allowed(name, f"session.tool_choice.{field_name}")


def _apply_instructions(session: dict[str, Any], policy: PolicyView, adjustments: list[str]) -> None:
    prefix = policy.instructions_prefix
    if not prefix:
        return
    own = session.get("instructions")
    session["instructions"] = f"{prefix}\n\n{own}" if own else prefix
    adjustments.append("instructions_prefixed")


def _apply_output_ceiling(session: dict[str, Any], policy: PolicyView, adjustments: list[str]) -> None:
    ceiling = policy.max_output_tokens_ceiling
    if ceiling is None:
        return
    requested = session.get("max_output_tokens")
    if isinstance(requested, int) and requested <= ceiling:
        return
    session["max_output_tokens"] = ceiling
    adjustments.append("max_output_tokens_capped")


def effective_ttl(requested: int | None, policy: PolicyView, adjustments: list[str]) -> tuple[int, int]:
    """(effective, asked-for) TTL in seconds."""
    asked = requested if requested is not None else policy.ttl_default_seconds
    low = max(OPENAI_TTL_MIN, policy.ttl_min_seconds)
    high = max(low, min(policy.ttl_max_seconds, policy.plan_ttl_max_seconds, OPENAI_TTL_MAX))
    if low <= asked <= high:
        return asked, asked
    if policy.ttl_mode == "reject":
        below = asked < low
        raise BadRequest(
            f"Invalid 'expires_after.seconds': integer {'below minimum' if below else 'above maximum'} "
            "value. "
            f"This organization allows client secrets to live {low} to {high} seconds, but got {asked}.",
            code="integer_below_min_value" if below else "integer_above_max_value",
            param="expires_after.seconds",
        )
    adjustments.append("ttl_clamped")
    return min(max(asked, low), high), asked


def apply_policy(request: dict[str, Any], policy: PolicyView, *, kind: str) -> IssuancePlan:
    """The effective session and TTL for a validated request (see the module docstring)."""
    session: dict[str, Any] = copy.deepcopy(request.get("session") or {"type": "realtime"})
    adjustments: list[str] = []
    _check_locked(session, policy)
    model = ""
    if session["type"] == "realtime":
        model = _apply_model(session, policy, adjustments)
        _apply_voice(session, policy, adjustments)
        _apply_tools(session, policy)
        _apply_instructions(session, policy, adjustments)
        _apply_output_ceiling(session, policy, adjustments)
    expires_after = request.get("expires_after") or {}
    ttl, asked = effective_ttl(expires_after.get("seconds"), policy, adjustments)
    max_session = policy.max_session_seconds
    if policy.plan_max_session_seconds is not None:
        max_session = min(max_session, policy.plan_max_session_seconds)
    return IssuancePlan(
        kind=kind,
        session=session,
        model=model,
        ttl_seconds=ttl,
        ttl_requested=asked,
        single_use=policy.relay_single_use,
        max_session_seconds=max_session,
        cost_ceiling_usd=policy.session_cost_ceiling_usd,
        adjustments=tuple(adjustments),
    )


# --- The session object of a relay secret's response ------------------------------------------

_REALTIME_DEFAULTS: dict[str, Any] = {
    "output_modalities": ["audio"],
    "tools": [],
    "tool_choice": "auto",
    "max_output_tokens": "inf",
    "tracing": None,
    "truncation": "auto",
    "prompt": None,
    "expires_at": 0,
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": None,
            "noise_reduction": None,
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 500,
                "idle_timeout_ms": None,
                "create_response": True,
                "interrupt_response": True,
            },
        },
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
    },
    "include": None,
}
_TRANSCRIPTION_DEFAULTS: dict[str, Any] = {
    "expires_at": 0,
    "audio": {"input": copy.deepcopy(_REALTIME_DEFAULTS["audio"]["input"])},
    "include": None,
}


def _overlay(base: Any, top: Any) -> Any:
    """`top` over `base`, recursively for objects. An object with another `type` (e.g. semantic_vad
    over server_vad) replaces the default whole rather than mixing their fields."""
    if not isinstance(base, dict) or not isinstance(top, dict):
        return copy.deepcopy(top)
    if "type" in base and "type" in top and base["type"] != top["type"]:
        return copy.deepcopy(top)
    merged = copy.deepcopy(base)
    for key, value in top.items():
        merged[key] = _overlay(merged[key], value) if key in merged else copy.deepcopy(value)
    return merged


def session_object(session: dict[str, Any], *, session_id: str) -> dict[str, Any]:
    """The GA session object a relay secret's response carries: the effective config over the
    documented upstream defaults, shaped like OpenAI's (`id`, `object`, `type`, …)."""
    if session["type"] == "transcription":
        head: dict[str, Any] = {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": session_id,
        }
        merged = _overlay(_TRANSCRIPTION_DEFAULTS, session)
    else:
        head = {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": session.get("model"),
        }
        merged = _overlay(_REALTIME_DEFAULTS, session)
    merged.pop("type", None)
    return {**head, **merged}
