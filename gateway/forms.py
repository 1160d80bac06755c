"""Forms of the dashboard: history filters, settings, mutes and the personal-rule editor."""

from __future__ import annotations

from zoneinfo import available_timezones

from django import forms
from django.contrib.auth.forms import UserCreationForm

from alerts.models import PERSONAL_MIN_COOLDOWN_SECONDS, AlertRule
from alerts.rule_language import RuleError, compile_rule
from notifications.models import SEVERITY_ORDER, NotificationChannel

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


class SignUpForm(UserCreationForm):
    """A new trader's account (username and password, Django's password validators)."""


MAX_URL_LENGTH = 2000
MAX_CAP = 1000
MAX_ROUTED_RULES = 50


class ChannelAddForm(forms.Form):
    """A channel whose address is pasted: Discord, Slack or webhook URL, or an email address."""

    kind = forms.ChoiceField(
        choices=[
            ("discord", "Discord webhook"),
            ("slack", "Slack incoming webhook"),
            ("webhook", "my own webhook (signed)"),
            ("email", "email"),
        ]
    )
    name = forms.CharField(max_length=80, required=False, help_text="what the page calls it")
    url = forms.CharField(
        max_length=MAX_URL_LENGTH,
        required=False,
        label="URL",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text="Discord, Slack or your webhook's https:// URL",
    )
    address = forms.EmailField(max_length=254, required=False, help_text="for email")

    def clean(self):
        data = super().clean()
        kind = data.get("kind")
        if kind == "email" and not data.get("address"):
            self.add_error("address", "enter the email address to send alerts to")
        if kind in {"discord", "slack", "webhook"} and not data.get("url"):
            self.add_error("url", "paste the URL to send alerts to")
        return data


class ChannelForm(forms.ModelForm):
    """Name, enabled and routing of one channel (its secrets are never part of this form)."""

    rules = forms.MultipleChoiceField(
        required=False,
        widget=forms.SelectMultiple(attrs={"size": 6}),
        help_text="used with 'only these rules'",
    )
    min_severity = forms.ChoiceField(
        required=False,
        choices=[("", "any severity"), *[(name, f"{name} and above") for name in SEVERITY_ORDER]],
        label="minimum severity",
    )
    quiet_start = forms.TimeField(
        required=False, widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"), label="quiet from"
    )
    quiet_end = forms.TimeField(
        required=False, widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"), label="quiet until"
    )
    daily_cap_per_symbol = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_CAP,
        label="at most N alerts per symbol per day",
        help_text="empty = no cap; counted per day in your time zone",
    )

    class Meta:
        model = NotificationChannel
        fields = [
            "name",
            "enabled",
            "scope",
            "rules",
            "min_severity",
            "watchlist_only",
            "quiet_start",
            "quiet_end",
            "quiet_action",
            "daily_cap_per_symbol",
        ]
        labels = {
            "scope": "which alerts",
            "watchlist_only": "only my watchlist",
            "quiet_action": "alerts in quiet hours",
        }
        help_texts = {"watchlist_only": "only symbols on your watchlist (Settings)"}
        widgets = {"scope": forms.RadioSelect, "quiet_action": forms.RadioSelect}

    def __init__(self, *args, rules: list[tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["rules"].choices = rules
        self.fields["name"].required = True

    def clean_rules(self) -> list[str]:
        rules = self.cleaned_data["rules"]
        if len(rules) > MAX_ROUTED_RULES:
            raise forms.ValidationError(f"at most {MAX_ROUTED_RULES} rules")
        return rules

    def clean(self):
        data = super().clean()
        if data.get("scope") == NotificationChannel.Scope.RULES and not data.get("rules"):
            self.add_error("rules", "pick at least one rule for 'only these rules'")
        if bool(data.get("quiet_start")) != bool(data.get("quiet_end")):
            self.add_error("quiet_end", "give both ends of the quiet hours, or neither")
        return data
