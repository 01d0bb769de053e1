"""OpenAI's `POST /v1/realtime/client_secrets` request body, as strict pydantic models.

The models follow the official SDK's request types (`openai.types.realtime.client_secret_create_params`,
checked field by field in `tokens/tests/test_openai_schema.py`) and the OpenAPI spec: a union of a
realtime and a transcription session chosen by `session.type`, unknown fields refused, JSON types
exact (no "10" for 10, no 1 for true). A bad body becomes one OpenAI-shaped 400 naming the dotted
`param` of the first problem, in the wording OpenAI uses (`Unknown parameter: 'session.voice'.`).

pydantic validates in Rust (tens of microseconds for a typical body), and the same models give
drf-spectacular the request schema.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator
from pydantic_core import ErrorDetails

from realtime_platform.errors import BadRequest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# Union members are tagged "~<name>" so the tag can be dropped from an error's location.
_TAG = "~"


def _by_type(*choices: str) -> Callable[[Any], str | None]:
    """Discriminate objects on their `type` field. Anything else is left to the error mapper:
    None for a non-object or a missing `type`, the unknown value itself for a wrong one."""

    def pick(value: Any) -> str | None:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        if not isinstance(kind, str):
            return None
        return _TAG + kind if kind in choices else kind

    return pick


def _by_json_type(expected: str, **tags: type | tuple[type, ...]) -> Discriminator:
    """Discriminate on the JSON type of the value (string, number, object…)."""

    def pick(value: Any) -> str | None:
        for tag, types in tags.items():
            if isinstance(value, types) and not (isinstance(value, bool) and bool not in _as_tuple(types)):
                return _TAG + tag
        return None

    return Discriminator(
        pick,
        custom_error_type="invalid_type",
        custom_error_message=expected,  # (a context dict would make the annotation unhashable)
    )


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


# --- Audio ------------------------------------------------------------------------------------


# `type` has no default: it picks the union member (`AudioFormat`), so a format without it is refused
# and the OpenAPI schema must say it is required.
class AudioPCM(_Strict):
    type: Literal["audio/pcm"]
    rate: Literal[24000] = 24000


class AudioPCMU(_Strict):
    type: Literal["audio/pcmu"]


class AudioPCMA(_Strict):
    type: Literal["audio/pcma"]


AudioFormat = Annotated[
    Annotated[AudioPCM, Tag("~audio/pcm")]
    | Annotated[AudioPCMU, Tag("~audio/pcmu")]
    | Annotated[AudioPCMA, Tag("~audio/pcma")],
    Discriminator(_by_type("audio/pcm", "audio/pcmu", "audio/pcma")),
]


class NoiseReduction(_Strict):
    type: Literal["near_field", "far_field"] | None = None
    strength: float | None = None


class AudioTranscription(_Strict):
    model: str | None = None
    language: str | None = None
    languages: list[str] | None = Field(default=None, min_length=1)
    keywords: list[str] | None = None
    prompt: str | None = None
    delay: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


class ServerVad(_Strict):
    type: Literal["server_vad"]
    threshold: float | None = Field(default=None, ge=0, le=1)
    prefix_padding_ms: int | None = Field(default=None, ge=0)
    silence_duration_ms: int | None = Field(default=None, ge=0)
    idle_timeout_ms: int | None = Field(default=None, ge=5000, le=30000)
    create_response: bool | None = None
    interrupt_response: bool | None = None


class SemanticVad(_Strict):
    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


TurnDetection = Annotated[
    Annotated[ServerVad, Tag("~server_vad")] | Annotated[SemanticVad, Tag("~semantic_vad")],
    Discriminator(_by_type("server_vad", "semantic_vad")),
]


class AudioInput(_Strict):
    format: AudioFormat | None = None
    noise_reduction: NoiseReduction | None = None
    transcription: AudioTranscription | None = None
    turn_detection: TurnDetection | None = None


class VoiceId(_Strict):
    id: str


Voice = Annotated[
    Annotated[str, Tag("~string")] | Annotated[VoiceId, Tag("~object")],
    _by_json_type("a string or an object", string=str, object=dict),
]


class AudioOutput(_Strict):
    format: AudioFormat | None = None
    voice: Voice | None = None
    speed: float | None = Field(default=None, ge=0.25, le=1.5)


class RealtimeAudio(_Strict):
    input: AudioInput | None = None
    output: AudioOutput | None = None


class TranscriptionAudio(_Strict):
    input: AudioInput | None = None


# --- Tools ------------------------------------------------------------------------------------


class FunctionTool(_Strict):
    type: Literal["function"] = "function"
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None


class McpToolFilter(_Strict):
    read_only: bool | None = None
    tool_names: list[str] | None = None


class McpApprovalFilter(_Strict):
    always: McpToolFilter | None = None
    never: McpToolFilter | None = None


McpAllowedTools = Annotated[
    Annotated[list[str], Tag("~array")] | Annotated[McpToolFilter, Tag("~object")],
    _by_json_type("an array or an object", array=list, object=dict),
]
McpRequireApproval = Annotated[
    Annotated[Literal["always", "never"], Tag("~string")] | Annotated[McpApprovalFilter, Tag("~object")],
    _by_json_type("a string or an object", string=str, object=dict),
]
McpConnector = Literal[
    "connector_dropbox",
    "connector_gmail",
    "connector_googlecalendar",
    "connector_googledrive",
    "connector_microsoftteams",
    "connector_outlookcalendar",
    "connector_outlookemail",
    "connector_sharepoint",
]


class McpTool(_Strict):
    # The OpenAPI schema's version of `_one_server` below: exactly one of the three is given.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["server_url"],
                    "properties": {"server_url": {"type": "string", "minLength": 1}},
                },
                {"required": ["connector_id"], "properties": {"connector_id": {"type": "string"}}},
                {"required": ["tunnel_id"], "properties": {"tunnel_id": {"type": "string"}}},
            ]
        }
    )

    type: Literal["mcp"]
    server_label: str
    server_url: str | None = None
    connector_id: McpConnector | None = None
    tunnel_id: str | None = Field(default=None, pattern=r"^tunnel_[a-z0-9]{32}$")
    authorization: str | None = None
    server_description: str | None = None
    headers: dict[str, str] | None = None
    allowed_tools: McpAllowedTools | None = None
    allowed_callers: list[Literal["direct", "programmatic"]] | None = Field(default=None, min_length=1)
    require_approval: McpRequireApproval | None = None
    defer_loading: bool | None = None

    @model_validator(mode="after")
    def _one_server(self) -> McpTool:
        given = [name for name in ("server_url", "connector_id", "tunnel_id") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("provide exactly one of 'server_url', 'connector_id' or 'tunnel_id'")
        return self


def _tool_kind(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    kind = value.get("type", "function")  # the SDK types let a function tool omit its type
    if not isinstance(kind, str):
        return None
    return _TAG + kind if kind in ("function", "mcp") else kind


Tool = Annotated[
    Annotated[FunctionTool, Tag("~function")] | Annotated[McpTool, Tag("~mcp")],
    Discriminator(_tool_kind),
]


class ToolChoiceFunction(_Strict):
    type: Literal["function"]
    name: str


class ToolChoiceMcp(_Strict):
    type: Literal["mcp"]
    server_label: str
    name: str | None = None


def _tool_choice_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "~mode"
    return _by_type("function", "mcp")(value)


ToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("~mode")]
    | Annotated[ToolChoiceFunction, Tag("~function")]
    | Annotated[ToolChoiceMcp, Tag("~mcp")],
    Discriminator(_tool_choice_kind),
]


# --- Other session fields ---------------------------------------------------------------------


class TracingConfiguration(_Strict):
    workflow_name: str | None = None
    group_id: str | None = None
    metadata: dict[str, Any] | None = None


Tracing = Annotated[
    Annotated[Literal["auto"], Tag("~string")] | Annotated[TracingConfiguration, Tag("~object")],
    _by_json_type("a string or an object", string=str, object=dict),
]


class TokenLimits(_Strict):
    post_instructions: int | None = Field(default=None, ge=0)


class RetentionRatioTruncation(_Strict):
    type: Literal["retention_ratio"]
    retention_ratio: float = Field(ge=0, le=1)
    token_limits: TokenLimits | None = None


Truncation = Annotated[
    Annotated[Literal["auto", "disabled"], Tag("~string")]
    | Annotated[RetentionRatioTruncation, Tag("~object")],
    _by_json_type("a string or an object", string=str, object=dict),
]


MaxOutputTokens = Annotated[
    Annotated[int, Field(ge=1, le=4096), Tag("~integer")] | Annotated[Literal["inf"], Tag("~string")],
    _by_json_type("an integer or 'inf'", integer=int, string=str),
]


class PromptCacheBreakpoint(_Strict):
    mode: Literal["explicit"]
    ttl: Literal["30m", "12h"] | None = None


class PromptInputText(_Strict):
    type: Literal["input_text"]
    text: str
    prompt_cache_breakpoint: PromptCacheBreakpoint | None = None


class PromptInputImage(_Strict):
    type: Literal["input_image"]
    detail: Literal["low", "high", "auto", "original"]
    file_id: str | None = None
    image_url: str | None = None
    prompt_cache_breakpoint: PromptCacheBreakpoint | None = None


class PromptInputFile(_Strict):
    type: Literal["input_file"]
    detail: Literal["auto", "low", "high"] | None = None
    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None
    prompt_cache_breakpoint: PromptCacheBreakpoint | None = None


def _prompt_variable_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "~string"
    return _by_type("input_text", "input_image", "input_file")(value)


PromptVariable = Annotated[
    Annotated[str, Tag("~string")]
    | Annotated[PromptInputText, Tag("~input_text")]
    | Annotated[PromptInputImage, Tag("~input_image")]
    | Annotated[PromptInputFile, Tag("~input_file")],
    Discriminator(_prompt_variable_kind),
]


class Prompt(_Strict):
    id: str
    version: str | None = None
    variables: dict[str, PromptVariable] | None = None


class Reasoning(_Strict):
    effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


Include = list[Literal["item.input_audio_transcription.logprobs"]]


# --- Sessions and the request -----------------------------------------------------------------


class RealtimeSession(_Strict):
    type: Literal["realtime"]
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Literal["text", "audio"]] | None = Field(default=None, min_length=1, max_length=1)
    audio: RealtimeAudio | None = None
    include: Include | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    max_output_tokens: MaxOutputTokens | None = None
    tracing: Tracing | None = None
    truncation: Truncation | None = None
    prompt: Prompt | None = None
    reasoning: Reasoning | None = None
    parallel_tool_calls: bool | None = None


class TranscriptionSession(_Strict):
    type: Literal["transcription"]
    audio: TranscriptionAudio | None = None
    include: Include | None = None


Session = Annotated[
    Annotated[RealtimeSession, Tag("~realtime")] | Annotated[TranscriptionSession, Tag("~transcription")],
    Discriminator(_by_type("realtime", "transcription")),
]


class ExpiresAfter(_Strict):
    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(default=600, ge=10, le=7200)


class ClientSecretCreateRequest(_Strict):
    """The body of `POST /v1/realtime/client_secrets`, exactly as OpenAI accepts it."""

    expires_after: ExpiresAfter | None = None
    session: Session | None = None


# --- Errors in OpenAI's words -----------------------------------------------------------------

_JSON_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "an array",
}


def _json_type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "an unknown type"


def _param(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc if not (isinstance(part, str) and part.startswith(_TAG)))


def _supported(values: list[str]) -> str:
    quoted = [f"'{value}'" for value in values]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + f" and {quoted[-1]}"


def _expected_values(ctx: dict[str, Any], key: str) -> list[str]:
    raw = str(ctx.get(key, ""))
    return [
        part.strip().strip("'").lstrip(_TAG) for part in raw.replace(" or ", ", ").split(",") if part.strip()
    ]


def bad_request_from(error: ErrorDetails) -> BadRequest:
    """One pydantic error as an OpenAI-shaped 400 (message, code and dotted param)."""
    kind = error["type"]
    loc = tuple(error["loc"])
    value = error.get("input")
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    param = _param(loc)

    if kind == "json_invalid":
        return BadRequest(
            "We could not parse the JSON body of your request. Send a valid JSON object with "
            "Content-Type: application/json.",
            code="invalid_json",
        )
    if kind == "missing":
        return BadRequest(
            f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
        )
    if kind == "extra_forbidden":
        return BadRequest(f"Unknown parameter: '{param}'.", code="unknown_parameter", param=param)
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        if not isinstance(value, dict):
            return _invalid_type(param, "an object", value)
        type_param = f"{param}.type" if param else "type"
        if "type" not in value:
            return BadRequest(
                f"Missing required parameter: '{type_param}'.",
                code="missing_required_parameter",
                param=type_param,
            )
        if not isinstance(value["type"], str):
            return _invalid_type(type_param, "a string", value["type"])
        return BadRequest(
            f"Invalid value: '{value['type']}'. Supported values are: "
            f"{_supported(_expected_values(ctx, 'expected_tags'))}.",
            code="invalid_value",
            param=type_param,
        )
    if kind == "literal_error":
        return BadRequest(
            f"Invalid value: '{value}'. Supported values are: "
            f"{_supported(_expected_values(ctx, 'expected'))}.",
            code="invalid_value",
            param=param,
        )
    if kind == "invalid_type":
        return _invalid_type(param, error["msg"], value)
    if kind in _JSON_TYPE_NAMES:
        return _invalid_type(param, _JSON_TYPE_NAMES[kind], value)
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        integer = isinstance(value, int) and isinstance(bound_value(ctx), int)
        below = kind.startswith("greater")
        bound = bound_value(ctx)
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[
            kind
        ]
        noun = "integer" if integer else "decimal"
        where = "below minimum" if below else "above maximum"
        return BadRequest(
            f"Invalid '{param}': {noun} {where} value. "
            f"Expected a value {sign} {bound}, but got {value} instead.",
            code=f"{noun}_{'below_min' if below else 'above_max'}_value",
            param=param,
        )
    if kind in ("too_short", "too_long"):
        short = kind == "too_short"
        bound = ctx.get("min_length" if short else "max_length")
        return BadRequest(
            f"Invalid '{param}': array {'too short' if short else 'too long'}. Expected an array with "
            f"{'at least' if short else 'at most'} {bound} item{'s' if bound != 1 else ''}.",
            code="array_below_min_length" if short else "array_above_max_length",
            param=param,
        )
    if kind == "string_pattern_mismatch":
        return BadRequest(
            f"Invalid '{param}': string does not match pattern '{ctx.get('pattern')}'.",
            code="invalid_value",
            param=param,
        )
    if kind == "value_error":
        return BadRequest(
            f"Invalid '{param}': {ctx.get('error', error['msg'])}.", code="invalid_value", param=param
        )
    return BadRequest(f"Invalid '{param}': {error['msg']}.", code="invalid_value", param=param or None)


def bound_value(ctx: dict[str, Any]) -> Any:
    for name in ("ge", "gt", "le", "lt"):
        if name in ctx:
            return ctx[name]
    return None


def _invalid_type(param: str, expected: str, value: Any) -> BadRequest:
    where = f" for '{param}'" if param else ""
    return BadRequest(
        f"Invalid type{where}: expected {expected}, but got {_json_type_of(value)} instead.",
        code="invalid_type",
        param=param or None,
    )


def parse_client_secret_request(body: bytes) -> ClientSecretCreateRequest:
    """Parse and validate a raw JSON body; an empty body means `{}` (the SDK sends `{}` anyway)."""
    try:
        return ClientSecretCreateRequest.model_validate_json(body or b"{}", strict=True)
    except ValidationError as exc:
        raise bad_request_from(exc.errors(include_url=False)[0]) from None


def request_as_dict(request: ClientSecretCreateRequest) -> dict[str, Any]:
    """Only what the client sent (explicit nulls kept), in JSON types."""
    return request.model_dump(mode="json", exclude_unset=True)
