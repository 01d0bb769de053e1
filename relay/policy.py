"""What a client may change in its relayed session: locked fields, allow-lists, ceilings.

Pure Python (no Django), so the relay core checks client events without a database. The rules
come from the tenant's SessionPolicy (relay/services.py builds them) and mean what they mean when a
client secret is issued (tokens/policy.py), with the same error codes; `current` is the session
as upstream last reported it (`session.created`/`session.updated`), so "changing a locked field"
means sending a value different from the one in force (resending it is harmless, as upstream).

What each checked client event may not do (a refusal is an OpenAI-shaped `error` event; the event
is not forwarded and the session stays up):
  session.update            change a locked field (`locked_parameter`); name a voice outside the
                            allow-list (`voice_not_allowed`) or a tool, or a forced tool_choice,
                            outside the tool allow-list (`tool_not_allowed`)
  response.create           the same, for the per-response overrides in `response`; and add a
                            system message to `response.input` when instructions are locked
  conversation.item.create  add a system message when instructions are locked (it would override them)
Not refusals, as at issuance: instructions without the enforced prefix get it prepended (blank
line between), and a `max_output_tokens` above the ceiling (or "inf") becomes the ceiling.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_MISSING = object()

# Fields of `response.create.response` that override the session for one response; they have the
# same names (and paths) as the session's, so one locked-field list covers both.
RESPONSE_OVERRIDES = (
    "instructions",
    "tools",
    "tool_choice",
    "audio",
    "max_output_tokens",
    "output_modalities",
    "prompt",
)


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str
    param: str | None = None


@dataclass(frozen=True)
class Verdict:
    """Neither set: forward as is. `refusal`: answer with an error. `rewritten`: forward this."""

    refusal: Refusal | None = None
    rewritten: dict[str, Any] | None = None


OK = Verdict()


def lookup(data: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path, or _MISSING. A non-object on the way counts as the value (setting
    `audio` to null changes `audio.output.voice` too)."""
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return node
        if part not in node:
            return _MISSING
        node = node[part]
    return node


def normalize_locked(paths: Iterable[str]) -> frozenset[str]:
    """Locked paths as the policy may write them (`instructions` or `session.instructions`)."""
    cleaned = {p.removeprefix("session.").strip(".") for p in paths}
    return frozenset(p for p in cleaned if p and p != "type")


def _voice_name(voice: Any) -> str | None:
    if isinstance(voice, str):
        return voice
    if isinstance(voice, Mapping) and isinstance(voice.get("id"), str):
        return str(voice["id"])  # a custom voice
    return None


def _tool_name(tool: Any) -> str | None:
    if not isinstance(tool, Mapping):
        return None
    name = tool.get("server_label") if tool.get("type") == "mcp" else tool.get("name")
    return name if isinstance(name, str) else None


@dataclass(frozen=True)
class SessionRules:
    locked_fields: frozenset[str] = frozenset()
    allowed_voices: frozenset[str] = frozenset()  # empty: any voice
    tool_allowlist: frozenset[str] | None = None  # None: any tool
    max_output_tokens_ceiling: int | None = None
    instructions_prefix: str = ""
    allowed_models: frozenset[str] = field(default_factory=frozenset)  # empty: any model

    def model_allowed(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models

    # --- one object: a session update, or a response's overrides --------------------------------

    def _refusal(self, update: Mapping[str, Any], current: Mapping[str, Any], where: str) -> Refusal | None:
        for path in sorted(self.locked_fields):
            wanted = lookup(update, path)
            if wanted is not _MISSING and wanted != lookup(current, path):
                return Refusal(
                    "locked_parameter",
                    f"The '{where}.{path}' setting is fixed by this organization's policy and cannot be "
                    "changed by the client.",
                    f"{where}.{path}",
                )
        voice = lookup(update, "audio.output.voice")
        if self.allowed_voices and voice is not _MISSING and _voice_name(voice) not in self.allowed_voices:
            return Refusal(
                "voice_not_allowed",
                f"The voice {_voice_name(voice)!r} is not allowed by this organization's policy. Allowed "
                f"voices: {', '.join(sorted(self.allowed_voices))}.",
                f"{where}.audio.output.voice",
            )
        if self.tool_allowlist is None:
            return None
        tools = update.get("tools")
        for index, tool in enumerate(tools if isinstance(tools, list) else []):
            if _tool_name(tool) not in self.tool_allowlist:
                return self._tool_refusal(_tool_name(tool), f"{where}.tools.{index}")
        choice = update.get("tool_choice")
        if isinstance(choice, Mapping) and _tool_name(choice) not in self.tool_allowlist:
            return self._tool_refusal(_tool_name(choice), f"{where}.tool_choice")
        return None

    def _tool_refusal(self, name: str | None, param: str) -> Refusal:
        allowed = ", ".join(sorted(self.tool_allowlist or ())) or "none"
        return Refusal(
            "tool_not_allowed",
            f"The tool {name!r} is not allowed by this organization's policy. Allowed tools: {allowed}.",
            param,
        )

    def _adjusted(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """`obj` with the enforced prefix and ceiling applied, or None when it already complies."""
        changes: dict[str, Any] = {}
        instructions = obj.get("instructions", _MISSING)
        prefix = self.instructions_prefix
        if prefix and isinstance(instructions, str) and not instructions.startswith(prefix):
            changes["instructions"] = f"{prefix}\n\n{instructions}" if instructions else prefix
        ceiling = self.max_output_tokens_ceiling
        max_tokens = obj.get("max_output_tokens", _MISSING)
        if (
            ceiling is not None
            and max_tokens is not _MISSING
            and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens > ceiling)
        ):
            changes["max_output_tokens"] = ceiling
        return {**obj, **changes} if changes else None

    def _system_message(self, items: Iterable[Any], param: str) -> Refusal | None:
        if "instructions" not in self.locked_fields:
            return None
        for item in items:
            if (
                isinstance(item, Mapping)
                and item.get("type", "message") == "message"
                and item.get("role") == "system"
            ):
                return Refusal(
                    "locked_parameter",
                    "System messages are not allowed: this organization's policy fixes the instructions.",
                    param,
                )
        return None

    # --- client events ------------------------------------------------------------------------------

    def check_session_update(self, event: dict[str, Any], current: Mapping[str, Any]) -> Verdict:
        session = event.get("session")
        if not isinstance(session, dict):
            return OK  # upstream answers a malformed update itself
        refusal = self._refusal(session, current, "session")
        if refusal:
            return Verdict(refusal=refusal)
        adjusted = self._adjusted(session)
        return Verdict(rewritten={**event, "session": adjusted}) if adjusted is not None else OK

    def check_response_create(self, event: dict[str, Any], current: Mapping[str, Any]) -> Verdict:
        response = event.get("response")
        if not isinstance(response, dict):
            return OK
        overrides = {k: v for k, v in response.items() if k in RESPONSE_OVERRIDES}
        refusal = self._refusal(overrides, current, "response")
        if refusal is None and isinstance(response.get("input"), list):
            refusal = self._system_message(response["input"], "response.input")
        if refusal:
            return Verdict(refusal=refusal)
        adjusted = self._adjusted(response)
        return Verdict(rewritten={**event, "response": adjusted}) if adjusted is not None else OK

    def check_item_create(self, event: dict[str, Any]) -> Verdict:
        refusal = self._system_message([event.get("item")], "item.role")
        return Verdict(refusal=refusal) if refusal else OK
