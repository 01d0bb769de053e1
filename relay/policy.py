"""What a client may change in its relayed session: locked fields, allow-lists, ceilings.

Pure Python (no Django), so the relay core can check client events without a database. The
rules come from the tenant's SessionPolicy (relay/services.py builds them); `current` is the
session as upstream last reported it (`session.created`/`session.updated`), so "changing a locked
field" means sending a value different from the one in force: resending it is harmless, as it is
upstream.

Checked events and what each check refuses (every refusal is an OpenAI-shaped `error` event; the
event is not forwarded and the session stays up):
  session.update           a locked field with another value; a voice outside the allow-list; a tool
                           outside the allow-list; max_output_tokens above the ceiling (or "inf")
  response.create          the same, for the per-response overrides in `response`, and a system
                           message in `response.input` when instructions are locked
  conversation.item.create a system message when instructions are locked (it would override them)
The enforced instructions prefix is not a refusal: instructions that lack it get it prepended.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_MISSING = object()

# Fields of `response.create.response` that override the session for one response, mapped to the
# session field they shadow (the same dotted path, so one locked-field list covers both).
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
    """None of both: forward as is. `refusal`: answer with an error. `rewritten`: forward this."""

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


def _tool_name(tool: Any) -> str | None:
    if not isinstance(tool, Mapping):
        return None
    name = tool.get("name") if tool.get("type", "function") == "function" else tool.get("server_label")
    return name if isinstance(name, str) else None


@dataclass(frozen=True)
class SessionRules:
    locked_fields: frozenset[str] = frozenset()
    allowed_voices: frozenset[str] = frozenset()  # empty: any voice
    tool_allowlist: frozenset[str] | None = None  # None: any tool
    max_output_tokens_ceiling: int | None = None
    instructions_prefix: str = ""
    allowed_models: frozenset[str] = field(default_factory=frozenset)  # empty: any model

    @property
    def is_open(self) -> bool:
        """Nothing to check: every event passes as it is."""
        return not (
            self.locked_fields
            or self.allowed_voices
            or self.tool_allowlist is not None
            or self.max_output_tokens_ceiling is not None
            or self.instructions_prefix
        )

    def model_allowed(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models

    # --- checks of one object (a session update, or a response's overrides) --------------------

    def _check_fields(
        self, update: Mapping[str, Any], current: Mapping[str, Any], where: str
    ) -> Refusal | None:
        for path in sorted(self.locked_fields):
            wanted = lookup(update, path)
            if wanted is _MISSING:
                continue
            if wanted != lookup(current, path):
                return Refusal(
                    "locked_field",
                    f"The field '{where}.{path}' is locked by this platform's policy and cannot be changed.",
                    f"{where}.{path}",
                )
        voice = lookup(update, "audio.output.voice")
        if self.allowed_voices and voice is not _MISSING and voice not in self.allowed_voices:
            return Refusal(
                "value_not_allowed",
                f"Voice {voice!r} is not allowed here. "
                f"Allowed voices: {', '.join(sorted(self.allowed_voices))}.",
                f"{where}.audio.output.voice",
            )
        tools = update.get("tools", _MISSING)
        if self.tool_allowlist is not None and tools is not _MISSING:
            for tool in tools if isinstance(tools, list) else [tools]:
                name = _tool_name(tool)
                if name is None or name not in self.tool_allowlist:
                    return Refusal(
                        "value_not_allowed",
                        f"Tool {name!r} is not allowed here."
                        + (
                            f" Allowed tools: {', '.join(sorted(self.tool_allowlist))}."
                            if self.tool_allowlist
                            else " No tools are allowed."
                        ),
                        f"{where}.tools",
                    )
        ceiling = self.max_output_tokens_ceiling
        max_tokens = update.get("max_output_tokens", _MISSING)
        if (
            ceiling is not None
            and max_tokens is not _MISSING
            and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens > ceiling)
        ):
            return Refusal(
                "value_not_allowed",
                f"max_output_tokens may be at most {ceiling} here.",
                f"{where}.max_output_tokens",
            )
        return None

    def _with_prefix(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """`obj` with the enforced instructions prefix, or None when it already complies."""
        instructions = obj.get("instructions", _MISSING)
        prefix = self.instructions_prefix
        if not prefix or not isinstance(instructions, str) or instructions.startswith(prefix):
            return None
        return {**obj, "instructions": f"{prefix}\n\n{instructions}" if instructions else prefix}

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
                    "locked_field",
                    "System messages are not allowed here: this platform's policy locks the instructions.",
                    param,
                )
        return None

    # --- checks of client events ----------------------------------------------------------------

    def check_session_update(self, event: dict[str, Any], current: Mapping[str, Any]) -> Verdict:
        session = event.get("session")
        if not isinstance(session, dict):
            return OK  # upstream answers a malformed update itself
        refusal = self._check_fields(session, current, "session")
        if refusal:
            return Verdict(refusal=refusal)
        fixed = self._with_prefix(session)
        return Verdict(rewritten={**event, "session": fixed}) if fixed is not None else OK

    def check_response_create(self, event: dict[str, Any], current: Mapping[str, Any]) -> Verdict:
        response = event.get("response")
        if not isinstance(response, dict):
            return OK
        overrides = {k: v for k, v in response.items() if k in RESPONSE_OVERRIDES}
        refusal = self._check_fields(overrides, current, "response")
        if refusal is None and isinstance(response.get("input"), list):
            refusal = self._system_message(response["input"], "response.input")
        if refusal:
            return Verdict(refusal=refusal)
        fixed = self._with_prefix(response)
        return Verdict(rewritten={**event, "response": fixed}) if fixed is not None else OK

    def check_item_create(self, event: dict[str, Any]) -> Verdict:
        refusal = self._system_message([event.get("item")], "item.role")
        return Verdict(refusal=refusal) if refusal else OK
