"""Forms of the tenant console's pages. They only parse and type the input; the rules (limits
within the plan, TTL bounds, the last owner…) live in tenants.services, whose refusals the views
show on the field they name."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.utils import timezone

from realtime_platform.console import ConsoleForm
from tenants.models import ALL_SCOPES, QuotaLimits, Role, Scope, SessionPolicy, Tenant
from tenants.selectors import EffectiveLimits
from tenants.services import POLICY_FIELDS

LIMIT_LABELS = {
    "secrets_per_day": "Client secrets per day",
    "concurrent_sessions": "Concurrent relay sessions",
    "audio_minutes_per_month": "Audio minutes per month",
    "tokens_per_month": "Tokens per month",
    "cost_usd_per_month": "Spending per month (USD)",
    "requests_per_minute": "API requests per minute",
    "max_session_seconds": "Longest session (seconds)",
}

KNOWN_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")


class LinesField(forms.CharField):
    """A list of short strings, typed one per line (commas work too). Empty input: []."""

    widget = forms.Textarea(attrs={"rows": 3, "spellcheck": "false"})

    def __init__(self, *, item_pattern: str = r"[A-Za-z0-9._:\-]+", max_items: int = 100, **kwargs: Any):
        self.item_pattern = re.compile(item_pattern)
        self.max_items = max_items
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return "\n".join(str(v) for v in value)
        return value

    def clean(self, value: Any) -> list[str]:
        text = super().clean(value) or ""
        items: list[str] = []
        for raw in re.split(r"[\n,]", text):
            item = raw.strip()
            if item and item not in items:
                items.append(item)
        bad = [item for item in items if not self.item_pattern.fullmatch(item)]
        if bad:
            raise forms.ValidationError(f"Not a valid entry: {bad[0]!r}. Use one name per line.")
        if len(items) > self.max_items:
            raise forms.ValidationError(f"At most {self.max_items} entries.")
        return items


def _limit_field(name: str, plan_value: Any) -> forms.Field:
    allows = "no limit" if plan_value is None else f"{plan_value:,}"
    help_text = f"Your plan allows {allows}. Leave empty to use the plan's limit."
    if name == "cost_usd_per_month":
        return forms.DecimalField(
            label=LIMIT_LABELS[name],
            required=False,
            min_value=Decimal("0"),
            max_digits=12,
            decimal_places=2,
            help_text=help_text,
            widget=forms.NumberInput(attrs={"step": "0.01", "inputmode": "decimal"}),
        )
    return forms.IntegerField(label=LIMIT_LABELS[name], required=False, min_value=0, help_text=help_text)


class QuotaForm(ConsoleForm):
    """The tenant's own limits, one optional number per limit of the plan."""

    def __init__(self, *args: Any, tenant: Tenant, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in QuotaLimits.LIMIT_FIELDS:
            self.fields[name] = _limit_field(name, getattr(tenant.plan, name))


class PolicyForm(ConsoleForm):
    secret_kind = forms.ChoiceField(
        label="Client secrets are",
        choices=SessionPolicy.SecretKind.choices,
        widget=forms.RadioSelect,
    )
    allowed_models = LinesField(
        label="Allowed models",
        help_text="One per line, e.g. gpt-realtime. Empty: any model.",
    )
    allowed_voices = LinesField(
        label="Allowed voices",
        help_text=f"One per line. Built-in voices: {', '.join(KNOWN_VOICES)}. Empty: any voice.",
    )
    ttl_min_seconds = forms.IntegerField(label="Shortest secret lifetime (seconds)", min_value=10)
    ttl_default_seconds = forms.IntegerField(label="Default secret lifetime (seconds)", min_value=10)
    ttl_max_seconds = forms.IntegerField(label="Longest secret lifetime (seconds)", min_value=10)
    ttl_mode = forms.ChoiceField(
        label="A requested lifetime outside these bounds is",
        choices=[
            (SessionPolicy.TtlMode.CLAMP, "Clamped into the bounds"),
            (SessionPolicy.TtlMode.REJECT, "Rejected with an error"),
        ],
        widget=forms.RadioSelect,
    )
    instructions_prefix = forms.CharField(
        label="Instructions prefix",
        required=False,
        max_length=8000,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Put before every session's instructions, whatever the client asks for.",
    )
    restrict_tools = forms.BooleanField(
        label="Allow only the tools listed below",
        required=False,
        help_text="Unticked: clients may declare any tool.",
    )
    tool_allowlist = LinesField(label="Allowed tools", help_text="Tool (function) names, one per line.")
    locked_fields = LinesField(
        label="Locked session fields",
        help_text="Dotted session fields clients may not set or change, e.g. audio.output.voice.",
    )
    max_output_tokens_ceiling = forms.IntegerField(
        label="Output tokens per response, at most",
        required=False,
        min_value=1,
        max_value=4096,
        help_text="Empty: no ceiling beyond the model's own (4,096).",
    )
    relay_single_use = forms.BooleanField(label="A relay token opens one session only", required=False)
    max_session_seconds = forms.IntegerField(
        label="Longest session (seconds)",
        min_value=1,
        help_text="A relayed session is ended when it reaches this (at most the plan's limit).",
    )
    session_cost_ceiling_usd = forms.DecimalField(
        label="Spending per session, at most (USD)",
        required=False,
        min_value=Decimal("0"),
        max_digits=10,
        decimal_places=4,
        help_text="A relayed session is ended when it reaches this. Empty: no ceiling.",
        widget=forms.NumberInput(attrs={"step": "0.0001", "inputmode": "decimal"}),
    )

    fieldsets = (
        ("Client secrets", ("secret_kind", "relay_single_use")),
        ("Secret lifetime", ("ttl_min_seconds", "ttl_default_seconds", "ttl_max_seconds", "ttl_mode")),
        (
            "What clients may ask for",
            ("allowed_models", "allowed_voices", "restrict_tools", "tool_allowlist", "locked_fields"),
        ),
        ("Instructions", ("instructions_prefix",)),
        ("Each session", ("max_session_seconds", "max_output_tokens_ceiling", "session_cost_ceiling_usd")),
    )

    def policy_values(self) -> dict[str, Any]:
        """The cleaned form as session_policy_update's `values`."""
        data = dict(self.cleaned_data)
        restrict = data.pop("restrict_tools")
        data["tool_allowlist"] = data["tool_allowlist"] if restrict else None
        return data

    @staticmethod
    def initial_from(policy: SessionPolicy) -> dict[str, Any]:
        initial = {name: getattr(policy, name) for name in POLICY_FIELDS}
        initial["restrict_tools"] = policy.tool_allowlist is not None
        initial["tool_allowlist"] = policy.tool_allowlist or []
        return initial


class UpstreamForm(ConsoleForm):
    upstream_mode = forms.ChoiceField(
        label="Sessions use", choices=Tenant.UpstreamMode.choices, widget=forms.RadioSelect
    )
    secret = forms.CharField(
        label="Your OpenAI API key",
        required=False,
        strip=True,
        max_length=512,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "spellcheck": "false"}, render_value=False),
        help_text="Stored encrypted and never shown again. Leave empty to keep the saved key.",
    )


EXPIRY_CHOICES = [
    ("", "Never"),
    ("7", "In 7 days"),
    ("30", "In 30 days"),
    ("90", "In 90 days"),
    ("365", "In a year"),
]


class _KeyLimitsMixin(ConsoleForm):
    secrets_per_day = forms.IntegerField(
        label="Client secrets per day", required=False, min_value=0, help_text="Empty: the tenant's limit."
    )
    concurrent_sessions = forms.IntegerField(
        label="Concurrent relay sessions", required=False, min_value=0, help_text="Empty: the tenant's limit."
    )
    cost_usd_per_month = forms.DecimalField(
        label="Spending per month (USD)",
        required=False,
        min_value=Decimal("0"),
        max_digits=12,
        decimal_places=2,
        help_text="Empty: the tenant's limit.",
        widget=forms.NumberInput(attrs={"step": "0.01", "inputmode": "decimal"}),
    )

    def describe_tenant_limits(self, limits: EffectiveLimits) -> None:
        for name in ("secrets_per_day", "concurrent_sessions", "cost_usd_per_month"):
            value = getattr(limits, name)
            allows = "no limit" if value is None else f"{value:,}"
            self.fields[name].help_text = f"At most the tenant's limit ({allows}). Empty: the tenant's limit."


class ApiKeyCreateForm(_KeyLimitsMixin):
    name = forms.CharField(label="Name", max_length=100, help_text="What uses it, e.g. “iOS app backend”.")
    scopes = forms.MultipleChoiceField(
        label="Scopes",
        choices=[(scope.value, f"{scope.value}: {scope.label}") for scope in Scope],
        widget=forms.CheckboxSelectMultiple,
        initial=[Scope.SECRETS_CREATE, Scope.REALTIME_CONNECT],
        error_messages={"required": "Choose at least one scope."},
    )
    expires_in_days = forms.TypedChoiceField(
        label="Expires", choices=EXPIRY_CHOICES, required=False, coerce=int, empty_value=None
    )

    fieldsets = (
        ("Limits of this key (optional)", ("secrets_per_day", "concurrent_sessions", "cost_usd_per_month")),
    )

    def expires_at(self) -> Any:
        days = self.cleaned_data.get("expires_in_days")
        return timezone.now() + timedelta(days=days) if days else None

    def scopes_in_order(self) -> list[str]:
        return [scope for scope in ALL_SCOPES if scope in self.cleaned_data["scopes"]]


GRACE_CHOICES = [
    (0, "Revoke the old key now"),
    (3600, "Keep the old key working for 1 hour"),
    (86400, "Keep the old key working for 24 hours"),
    (604800, "Keep the old key working for 7 days"),
]


class ApiKeyRotateForm(ConsoleForm):
    grace_seconds = forms.TypedChoiceField(label="Old key", choices=GRACE_CHOICES, coerce=int, initial=0)


class ApiKeySettingsForm(_KeyLimitsMixin):
    secret_kind = forms.ChoiceField(
        label="Client secrets issued with this key are",
        required=False,
        choices=[("", "As the session policy says"), *SessionPolicy.SecretKind.choices],
        widget=forms.RadioSelect,
    )


def _role_field(roles: tuple[str, ...]) -> forms.ChoiceField:
    return forms.ChoiceField(label="Role", choices=[(role, Role(role).label) for role in roles])


class MemberAddForm(ConsoleForm):
    identifier = forms.CharField(
        label="Username or email",
        max_length=254,
        help_text="The person must already have an account on this platform.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "autocapitalize": "none"}),
    )

    def __init__(self, *args: Any, roles: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["role"] = _role_field(roles)
        self.fields["role"].initial = Role.VIEWER


class MemberRoleForm(ConsoleForm):
    def __init__(self, *args: Any, roles: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["role"] = _role_field(roles)
