"""Forms of the console's audit pages. Times are typed in the tenant's time zone (the console
guard makes it the current one); the rules of a filter are audit.selectors' (its refusals are
shown on the field they name)."""

from __future__ import annotations

from typing import Any

from django import forms

from audit.exports import FORMATS
from audit.selectors import ACTOR_TYPES, AuditFilter, audit_filter_from_params
from realtime_platform.console import ConsoleForm, LocalDateTimeInput
from realtime_platform.errors import BadRequest

ACTOR_TYPE_LABELS = {"user": "Console user", "api_key": "API key", "system": "The platform"}
FORMAT_LABELS = {
    "csv": "CSV (spreadsheets; verifiable offline)",
    "jsonl": "JSON Lines (verifiable offline)",
    "pdf": "PDF summary report",
}
FILTER_FIELDS = ("since", "until", "actor", "actor_type", "action", "target_type", "target_id", "request_id")


class AuditFilterForm(ConsoleForm):
    """The viewer's filter, and the selection of an export (the same fields)."""

    since = forms.DateTimeField(label="From", required=False, widget=LocalDateTimeInput())
    until = forms.DateTimeField(label="Until", required=False, widget=LocalDateTimeInput())
    actor = forms.CharField(
        label="Actor",
        required=False,
        max_length=200,
        help_text="A username, an API key prefix (rtp_sk_…) or a platform job, exactly.",
    )
    actor_type = forms.ChoiceField(
        label="Actor type",
        required=False,
        choices=[("", "Any"), *((kind, ACTOR_TYPE_LABELS[kind]) for kind in ACTOR_TYPES)],
    )
    action = forms.CharField(
        label="Action",
        required=False,
        max_length=64,
        help_text="Such as key.revoked or session.refused.",
        widget=forms.TextInput(attrs={"list": "audit-actions", "autocomplete": "off", "spellcheck": "false"}),
    )
    target_type = forms.CharField(
        label="Target type",
        required=False,
        max_length=64,
        help_text="Such as tenants.apikey or tokens.clientsecret.",
        widget=forms.TextInput(attrs={"spellcheck": "false"}),
    )
    target_id = forms.CharField(label="Target id", required=False, max_length=64)
    request_id = forms.CharField(label="Request id", required=False, max_length=128)

    def __init__(self, *args: Any, time_zone_name: str = "UTC", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("since", "until"):
            self.fields[name].help_text = f"Your tenant's time ({time_zone_name})."
        self.fields["until"].help_text += " Events before this moment."

    def audit_filter(self) -> AuditFilter | None:
        """The filter, once the form is valid; None (with the reason on the form) otherwise."""
        if not self.is_valid():
            return None
        params: dict[str, str] = {}
        for name in FILTER_FIELDS:
            value = self.cleaned_data.get(name)
            if value:
                params[name] = value.isoformat() if hasattr(value, "isoformat") else str(value)
        try:
            return audit_filter_from_params(params)
        except BadRequest as exc:
            self.add_error(exc.param if exc.param in self.fields else None, exc.message)
            return None

    def active_values(self) -> list[tuple[str, str]]:
        """The filter as typed (name, value), for hidden fields and links that keep it."""
        if not self.is_bound:
            return []
        return [(name, str(self.data.get(name, ""))) for name in FILTER_FIELDS if self.data.get(name)]


class AuditExportForm(forms.Form):
    format = forms.ChoiceField(choices=[(fmt, FORMAT_LABELS[fmt]) for fmt in FORMATS])
