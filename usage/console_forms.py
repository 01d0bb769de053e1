"""Forms of the console's usage pages: the dashboard's choice of period, key and model, and the
threshold-alert settings. The rules (URL, addresses, percentages) are usage.alerts' own; its
refusals are shown on the field they name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, cast

from django import forms

from realtime_platform.console import ConsoleForm
from tenants.models import ApiKey
from usage.selectors import MAX_DAYS

RANGES = {
    "24h": "Last 24 hours, by hour",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "90d": "Last 90 days",
    "custom": "Days I choose",
}
DAYS_OF = {"7d": 7, "30d": 30, "90d": 90}
DEFAULT_RANGE = "7d"


class DateInput(forms.DateInput):
    input_type = "date"

    def __init__(self) -> None:
        super().__init__(format="%Y-%m-%d")


@dataclass(frozen=True)
class DashboardPeriod:
    """Either local days `first_day`…`last_day` (daily points) or the hours [since, until)."""

    granularity: str  # "day" or "hour"
    first_day: date | None = None
    last_day: date | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def description(self) -> str:
        if self.granularity == "hour":
            return "the last 24 hours, by hour"
        assert self.first_day is not None
        assert self.last_day is not None
        if self.first_day == self.last_day:
            return f"{self.first_day:%Y-%m-%d}"
        return f"{self.first_day:%Y-%m-%d} to {self.last_day:%Y-%m-%d}, by day"


class DashboardForm(ConsoleForm):
    range = forms.ChoiceField(
        label="Period", choices=list(RANGES.items()), required=False, initial=DEFAULT_RANGE
    )
    first_day = forms.DateField(
        label="From (day)", required=False, widget=DateInput(), help_text="With “Days I choose”."
    )
    last_day = forms.DateField(label="To (day, included)", required=False, widget=DateInput())
    api_key = forms.TypedChoiceField(label="API key", required=False, coerce=int, empty_value=None)
    model = forms.ChoiceField(label="Model", required=False)

    def __init__(self, *args: Any, api_keys: list[ApiKey], models: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["api_key"]).choices = [
            ("", "All keys"),
            *(
                (key.pk, f"{key.name} ({key.prefix}…){' (revoked)' if key.revoked_at else ''}")
                for key in api_keys
            ),
        ]
        cast(forms.ChoiceField, self.fields["model"]).choices = [
            ("", "All models"),
            *((m, m) for m in models),
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("range") == "custom":
            first, last = cleaned.get("first_day"), cleaned.get("last_day")
            if first is None and "first_day" not in self.errors:
                self.add_error("first_day", "Choose the first day.")
            if last is None and "last_day" not in self.errors:
                self.add_error("last_day", "Choose the last day.")
            if first is not None and last is not None:
                if last < first:
                    self.add_error("last_day", "The last day must not be before the first day.")
                elif (last - first).days + 1 > MAX_DAYS:
                    self.add_error("first_day", f"Choose at most {MAX_DAYS} days.")
        return cleaned

    def period(self, *, today: date, now: datetime) -> DashboardPeriod:
        """The period asked for (the default one when the form is unbound); valid form only."""
        data = self.cleaned_data if self.is_bound else {}
        choice = data.get("range") or DEFAULT_RANGE
        if choice == "24h":
            return DashboardPeriod("hour", since=now - timedelta(hours=23), until=now)
        if choice == "custom":
            return DashboardPeriod("day", first_day=data["first_day"], last_day=data["last_day"])
        return DashboardPeriod("day", first_day=today - timedelta(days=DAYS_OF[choice] - 1), last_day=today)


class ThresholdsField(forms.CharField):
    """Whole percentages, separated by commas or spaces ("50, 80, 95, 100")."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return ", ".join(str(v) for v in value)
        return value

    def clean(self, value: Any) -> list[int]:
        text = super().clean(value) or ""
        items = [item for item in re.split(r"[\s,;%]+", text) if item]
        if any(not item.isdigit() for item in items):
            raise forms.ValidationError("Use whole percentages separated by commas, such as 50, 80, 100.")
        return [int(item) for item in items]


class EmailsField(forms.CharField):
    """Addresses, one per line (commas work too); usage.alerts validates each one."""

    widget = forms.Textarea(attrs={"rows": 3, "spellcheck": "false"})

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return "\n".join(str(v) for v in value)
        return value

    def clean(self, value: Any) -> list[str]:
        text = super().clean(value) or ""
        return [item.strip() for item in re.split(r"[\n,;]", text) if item.strip()]


class AlertSettingsForm(ConsoleForm):
    thresholds = ThresholdsField(
        label="Thresholds (%)",
        required=False,
        help_text="Percentages of each limit (secrets per day; audio minutes, tokens and spending per "
        "month). Each one fires once per period. Leave empty for no alerts.",
    )
    webhook_url = forms.CharField(
        label="Webhook URL",
        required=False,
        max_length=500,
        help_text="Receives a signed JSON POST for each alert (header X-RTP-Signature). "
        "Leave empty for none.",
        widget=forms.TextInput(
            attrs={
                "inputmode": "url",
                "spellcheck": "false",
                "placeholder": "https://example.com/hooks/quota",
            }
        ),
    )
    emails = EmailsField(
        label="Email recipients", required=False, help_text="One address per line, at most 10."
    )
