"""The filter of the console's client-secret list. Times are typed in the tenant's time zone
(the console guard makes it the current one)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from django import forms

from realtime_platform.console import ConsoleForm, LocalDateTimeInput
from tenants.models import ApiKey
from tokens.models import ClientSecret

FILTER_FIELDS = ("status", "kind", "api_key", "model", "created_after", "created_before")


class ClientSecretFilterForm(ConsoleForm):
    status = forms.ChoiceField(label="Status", required=False)
    kind = forms.ChoiceField(label="Kind", required=False, choices=[("", "Any"), *ClientSecret.Kind.choices])
    api_key = forms.TypedChoiceField(label="API key", required=False, coerce=int, empty_value=None)
    model = forms.CharField(label="Model", required=False, max_length=100)
    created_after = forms.DateTimeField(label="Issued from", required=False, widget=LocalDateTimeInput())
    created_before = forms.DateTimeField(label="Issued before", required=False, widget=LocalDateTimeInput())

    def __init__(
        self, *args: Any, api_keys: list[ApiKey], time_zone_name: str = "UTC", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        status = cast(forms.ChoiceField, self.fields["status"])
        status.choices = [("", "Any"), *ClientSecret.Status.choices]
        status.help_text = "Expired includes secrets past their expiry not yet swept."
        cast(forms.ChoiceField, self.fields["api_key"]).choices = [
            ("", "Any"),
            *(
                (key.pk, f"{key.name} ({key.prefix}…){' (revoked)' if key.revoked_at else ''}")
                for key in api_keys
            ),
        ]
        for name in ("created_after", "created_before"):
            self.fields[name].help_text = f"Your tenant's time ({time_zone_name})."

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        after: datetime | None = cleaned.get("created_after")
        before: datetime | None = cleaned.get("created_before")
        if after is not None and before is not None and after >= before:
            self.add_error("created_before", "Must be later than “Issued from”.")
        return cleaned

    def selector_filters(self) -> dict[str, Any]:
        """Keyword arguments of tokens.selectors.client_secret_list (valid form only)."""
        data = self.cleaned_data
        return {
            "status": data.get("status") or None,
            "kind": data.get("kind") or None,
            "api_key_id": data.get("api_key"),
            "model": data.get("model") or None,
            "created_after": data.get("created_after"),
            "created_before": data.get("created_before"),
        }

    def active_values(self) -> list[tuple[str, str]]:
        if not self.is_bound:
            return []
        return [(name, str(self.data.get(name, ""))) for name in FILTER_FIELDS if self.data.get(name)]
