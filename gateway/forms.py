"""Forms of the dashboard: history filters, settings, mutes and the personal-rule editor."""

from __future__ import annotations

from zoneinfo import available_timezones

from django import forms

from alerts.models import PERSONAL_MIN_COOLDOWN_SECONDS, AlertRule
from alerts.rule_language import RuleError, compile_rule

MUTE_DURATIONS = [
    ("1", "1 hour"),
    ("4", "4 hours"),
    ("24", "1 day"),
    ("168", "1 week"),
    ("", "until unmuted"),
]


class HistoryFilterForm(forms.Form):
    """GET filters of the history page; times are in the viewer's time zone."""

    rule = forms.ChoiceField(required=False)
    symbol = forms.CharField(required=False, max_length=64)
    direction = forms.ChoiceField(required=False, choices=[("", "any"), *AlertRule.Direction.choices])
    since = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}), label="from"
    )
    until = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}), label="to"
    )

    def __init__(self, *args, rules: list[tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["rule"].choices = [("", "any"), *rules]

    def clean(self):
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and since >= until:
            raise forms.ValidationError("'from' must be before 'to'")
        return data


class PreferencesForm(forms.Form):
    watchlist = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="symbols separated by spaces, commas or lines; empty = every symbol",
    )
    min_volume_1d = forms.FloatField(
        required=False, min_value=0, label="minimum 1-day volume (USDT)", help_text="empty = no minimum"
    )
    timezone = forms.CharField(max_length=64, help_text="IANA name, e.g. Europe/Paris")

    def clean_watchlist(self) -> list[str]:
        text = self.cleaned_data["watchlist"].replace(",", " ")
        symbols = [word.strip().upper() for word in text.split()]
        too_long = [symbol for symbol in symbols if len(symbol) > 64]
        if too_long:
            raise forms.ValidationError(f"not a symbol: {too_long[0][:70]!r}")
        return list(dict.fromkeys(symbols))

    def clean_timezone(self) -> str:
        name = self.cleaned_data["timezone"].strip()
        if name not in available_timezones():
            raise forms.ValidationError(f"unknown time zone {name!r} (use an IANA name like Europe/Paris)")
        return name


class MuteForm(forms.Form):
    kind = forms.ChoiceField(choices=[("rule", "rule"), ("symbol", "symbol")])
    name = forms.CharField(max_length=120, help_text="a rule's slug or a symbol")
    hours = forms.ChoiceField(choices=MUTE_DURATIONS, required=False, label="for")

    def clean_hours(self) -> float | None:
        value = self.cleaned_data.get("hours")
        return float(value) if value else None

    def clean(self):
        data = super().clean()
        if data.get("kind") == "symbol" and data.get("name"):
            data["name"] = data["name"].strip().upper()
        return data


class PersonalRuleForm(forms.ModelForm):
    """A user's own rule; the expression is checked with the rule language's own messages, the name and
    description lengths come from the model and the cooldown floor is the contract's (§8)."""

    cooldown_seconds = forms.IntegerField(
        min_value=PERSONAL_MIN_COOLDOWN_SECONDS,
        max_value=2_147_483_647,
        initial=300,
        help_text=f"at least {PERSONAL_MIN_COOLDOWN_SECONDS} s between two alerts of a symbol",
    )

    class Meta:
        model = AlertRule
        fields = [
            "name",
            "expression",
            "description",
            "severity",
            "direction",
            "mode",
            "cooldown_seconds",
            "enabled",
        ]
        widgets = {
            "expression": forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "mono"}),
            "description": forms.Textarea(attrs={"rows": 2}),
        }

    def clean_expression(self) -> str:
        expression = self.cleaned_data["expression"]
        try:
            compile_rule(expression)
        except RuleError as error:
            raise forms.ValidationError(str(error)) from None
        return expression
