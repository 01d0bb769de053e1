"""The filter of the console's session list. Times are typed in the tenant's time zone (the
console guard makes it the current one)."""

from __future__ import annotations

from typing import Any, cast

from django import forms

from realtime_platform.console import ConsoleForm, LocalDateTimeInput
from relay.models import RealtimeSession
from tenants.models import ApiKey

FILTER_FIELDS = ("status", "api_key", "model", "credential", "started_after", "started_before")
STATUS_CHOICES = [("active", "Live"), ("ended", "Ended"), ("all", "All")]


def key_choices(api_keys: list[ApiKey], empty: str) -> list[tuple[Any, str]]:
    return [
        ("", empty),
        *(
            (key.pk, f"{key.name} ({key.prefix}…){' (revoked)' if key.revoked_at else ''}")
            for key in api_keys
        ),
    ]


class SessionFilterForm(ConsoleForm):
    status = forms.ChoiceField(label="Status", choices=STATUS_CHOICES, required=False, initial="active")
    api_key = forms.TypedChoiceField(label="API key", required=False, coerce=int, empty_value=None)
    model = forms.CharField(label="Model", required=False, max_length=100)
    credential = forms.ChoiceField(
        label="Opened with", required=False, choices=[("", "Any"), *RealtimeSession.Credential.choices]
    )
    started_after = forms.DateTimeField(label="Started from", required=False, widget=LocalDateTimeInput())
    started_before = forms.DateTimeField(label="Started before", required=False, widget=LocalDateTimeInput())

    def __init__(
        self, *args: Any, api_keys: list[ApiKey], time_zone_name: str = "UTC", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["api_key"]).choices = key_choices(api_keys, "Any")
        for name in ("started_after", "started_before"):
            self.fields[name].help_text = f"Your tenant's time ({time_zone_name})."

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        after, before = cleaned.get("started_after"), cleaned.get("started_before")
        if after is not None and before is not None and after >= before:
            self.add_error("started_before", "Must be later than “Started from”.")
        return cleaned

    def selector_filters(self) -> dict[str, Any]:
        """Keyword arguments of relay.selectors.realtime_session_filter (valid or unbound form)."""
        data = self.cleaned_data if self.is_bound else {}
        status = data.get("status") or "active"
        return {
            "status": None if status == "all" else status,
            "api_key_id": data.get("api_key"),
            "model": data.get("model") or None,
            "credential": data.get("credential") or None,
            "started_after": data.get("started_after"),
            "started_before": data.get("started_before"),
        }

    def active_values(self) -> list[tuple[str, str]]:
        if not self.is_bound:
            return []
        return [(name, str(self.data.get(name, ""))) for name in FILTER_FIELDS if self.data.get(name)]


class TerminateAllForm(forms.Form):
    api_key = forms.TypedChoiceField(label="Sessions of", required=False, coerce=int, empty_value=None)

    def __init__(self, *args: Any, api_keys: list[ApiKey], **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["api_key"]).choices = key_choices(api_keys, "Every API key")
