"""Web views: the liveness probe and the dashboard pages (thin: reads in selectors, writes in services).

Pages need a signed-in user unless ``ALLOW_ANONYMOUS_DASHBOARD`` is on; the settings pages always do.
Times are shown in the viewer's time zone (their settings; UTC for anonymous viewers).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from functools import wraps
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from alerts import services as alert_services
from alerts.rule_language import RuleError, compile_rule
from cryptomon.contract.names import TIMEFRAMES
from gateway import limits, selectors
from gateway.forms import HistoryFilterForm, MuteForm, PersonalRuleForm, PreferencesForm

HISTORY_PAGE_SIZE = 50
CSV_MAX_ROWS = 100_000
SYMBOL_PAGE_ALERTS = 50
# ASCII digits only: str.isdigit() accepts "²", which int() refuses, and int() refuses 4,300+ digits.
WHOLE_NUMBER = re.compile(r"[0-9]{1,12}")


def _whole_number(raw: str | None) -> int | None:
    """`raw` as an int if it is 1-12 ASCII digits, else None."""
    return int(raw) if raw is not None and WHOLE_NUMBER.fullmatch(raw) else None


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up (for liveness probes)."""
    return JsonResponse({"status": "ok"})


# --- access and time zone ----------------------------------------------------------------------------------


def _zone_name(request: HttpRequest) -> str:
    if not request.user.is_authenticated:
        return "UTC"
    return selectors.user_settings(request.user).timezone or "UTC"


def _with_zone(view: Callable) -> Callable:
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        request.zone_name = _zone_name(request)
        timezone.activate(ZoneInfo(request.zone_name))
        try:
            return view(request, *args, **kwargs)
        finally:
            timezone.deactivate()

    return wrapper


def dashboard_page(view: Callable) -> Callable:
    """Signed-in users, or everyone when ALLOW_ANONYMOUS_DASHBOARD is on."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if not request.user.is_authenticated and not settings.ALLOW_ANONYMOUS_DASHBOARD:
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return _with_zone(wrapper)


def _page_context(request: HttpRequest, page: str, **extra) -> dict:
    return {
        "page": page,
        "zone_name": request.zone_name,
        "ws_path": "/ws/alerts/",
        "watchlist": sorted(selectors.user_settings(request.user).watchlist or [])
        if request.user.is_authenticated
        else [],
        **extra,
    }


# --- pages --------------------------------------------------------------------------------------------------


@dashboard_page
def live(request: HttpRequest) -> HttpResponse:
    """Live alert feed, market table and feed status; everything after the first paint comes over §10."""
    context = _page_context(request, "live", price_decimals=selectors.price_decimals())
    return render(request, "gateway/live.html", context)


@dashboard_page
def symbol_page(request: HttpRequest, symbol: str) -> HttpResponse:
    if not selectors.symbol_exists(symbol):
        raise Http404(f"unknown symbol {symbol!r}")
    latest = selectors.latest_metrics(symbol)
    tick_size, decimals = selectors.price_format(symbol)
    alerts = list(
        selectors.filtered_alerts(request.user, selectors.AlertFilters(symbol=symbol))[:SYMBOL_PAGE_ALERTS]
    )
    context = _page_context(
        request,
        "symbol",
        symbol=symbol,
        latest=latest,
        timeframes=[
            (timeframe, (latest or {}).get("timeframes", {}).get(timeframe, {})) for timeframe in TIMEFRAMES
        ],
        alerts=alerts,
        decimals=decimals,
        tick_size=tick_size,
        price_decimals={symbol: decimals},
        chart_intervals=list(selectors.CHART_INTERVALS),
    )
    return render(request, "gateway/symbol.html", context)


@dashboard_page
def history(request: HttpRequest) -> HttpResponse:
    """Alert history with filters, pages and CSV export (`?format=csv`, the same filters)."""
    form = HistoryFilterForm(request.GET or None, rules=selectors.rule_choices(request.user))
    filters = selectors.AlertFilters()
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        filters = selectors.AlertFilters(
            rule=data["rule"] or None,
            symbol=(data["symbol"] or "").strip().upper() or None,
            direction=data["direction"] or None,
            since=data["since"],
            until=data["until"],
        )
    raw_page = request.GET.get("page") or None
    if raw_page is not None and _whole_number(raw_page) is None:
        return HttpResponse(
            "page: must be a whole number (digits 0-9, at most 12)", status=400, content_type="text/plain"
        )
    queryset = selectors.filtered_alerts(request.user, filters)
    if request.GET.get("format") == "csv":
        return _csv(queryset, request.zone_name)
    page = Paginator(queryset, HISTORY_PAGE_SIZE).get_page(raw_page)
    query = request.GET.copy()
    query.pop("page", None)
    decimals = selectors.price_decimals(sorted({alert.symbol for alert in page.object_list}))
    context = _page_context(
        request, "history", form=form, page_obj=page, query=query.urlencode(), decimals=decimals
    )
    return render(request, "gateway/history.html", context)


def _cell(text: str) -> str:
    """Text a spreadsheet would run as a formula (rule names are user input) is kept as text."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv(queryset, zone_name: str) -> StreamingHttpResponse:
    zone = ZoneInfo(zone_name)
    writer = csv.writer(_Echo())
    header = ["time", "open_time", "symbol", "rule", "rule_name", "direction", "severity", "price", "late"]

    def rows():
        yield writer.writerow([*header, "metrics"])
        for alert in queryset[:CSV_MAX_ROWS].iterator(chunk_size=2000):
            yield writer.writerow(
                [
                    alert.time.astimezone(zone).isoformat(),
                    alert.open_time,
                    _cell(alert.symbol),
                    _cell(alert.rule),
                    _cell(alert.rule_name),
                    alert.direction,
                    alert.severity,
                    repr(alert.price),
                    "true" if alert.late else "false",
                    json.dumps(alert.metrics, ensure_ascii=False),
                ]
            )

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="cryptomon-alerts.csv"'
    return response


# --- settings (always signed in) ----------------------------------------------------------------------------


def settings_page_view(view: Callable) -> Callable:
    return login_required(_with_zone(view))


def _settings_context(request: HttpRequest, **forms) -> dict:
    row = selectors.user_settings(request.user)
    preferences = forms.pop("preferences", None) or PreferencesForm(
        initial={
            "watchlist": "\n".join(row.watchlist or []),
            "min_volume_1d": row.min_volume_1d,
            "timezone": row.timezone,
        }
    )
    mutes = [("rule", name, until) for name, until in sorted((row.muted_rules or {}).items())]
    mutes += [("symbol", name, until) for name, until in sorted((row.muted_symbols or {}).items())]
    return _page_context(
        request,
        "settings",
        preferences=preferences,
        mute_form=forms.pop("mute_form", None) or MuteForm(),
        mutes=mutes,
        rules=selectors.personal_rules(request.user),
        max_rules=settings.ALERTS_MAX_PERSONAL_RULES,
        **forms,
    )


@settings_page_view
def settings_page(request: HttpRequest) -> HttpResponse:
    return render(request, "gateway/settings.html", _settings_context(request))


@settings_page_view
@require_POST
def save_preferences(request: HttpRequest) -> HttpResponse:
    form = PreferencesForm(request.POST)
    if form.is_valid():
        try:
            alert_services.update_preferences(request.user, **form.cleaned_data)
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(request, "Settings saved.")
            return redirect("settings")
    return render(request, "gateway/settings.html", _settings_context(request, preferences=form), status=400)


@settings_page_view
@require_POST
def add_mute(request: HttpRequest) -> HttpResponse:
    form = MuteForm(request.POST)
    if not form.is_valid():
        return render(
            request, "gateway/settings.html", _settings_context(request, mute_form=form), status=400
        )
    data = form.cleaned_data
    try:
        alert_services.mute(request.user, kind=data["kind"], name=data["name"], hours=data["hours"])
    except ValidationError as error:
        form.add_error(None, error)
        return render(
            request, "gateway/settings.html", _settings_context(request, mute_form=form), status=400
        )
    messages.success(request, f"Muted {data['kind']} {data['name']}.")
    return redirect("settings")


@settings_page_view
@require_POST
def remove_mute(request: HttpRequest) -> HttpResponse:
    kind = request.POST.get("kind")
    if kind not in ("rule", "symbol"):
        return HttpResponse("kind must be rule or symbol", status=400)
    alert_services.unmute(request.user, kind=kind, name=request.POST.get("name", ""))
    return redirect("settings")


@require_POST
def toggle_watchlist(request: HttpRequest) -> JsonResponse:
    """The live table's star (JSON, CSRF header)."""
    if not request.user.is_authenticated:
        return JsonResponse({"error": "sign in to keep a watchlist"}, status=401)
    symbol = (request.POST.get("symbol") or "").strip()
    if not symbol or len(symbol) > 64:
        return JsonResponse({"error": "symbol: missing or too long"}, status=400)
    if "\x00" in symbol:  # PostgreSQL cannot store NUL (the save would fail with a 500)
        return JsonResponse({"error": "symbol: contains a NUL character"}, status=400)
    try:
        starred = alert_services.toggle_watchlist(request.user, symbol)
    except ValueError as error:
        return JsonResponse({"error": str(error)}, status=400)
    return JsonResponse({"symbol": symbol, "starred": starred})


@settings_page_view
def rule_edit(request: HttpRequest, rule_id: int | None = None) -> HttpResponse:
    """Create (no id) or edit one of the user's personal rules."""
    rule = None
    if rule_id is not None:
        rule = selectors.personal_rule(request.user, rule_id)
        if rule is None:
            raise Http404("no such rule of yours")
    # Bound on every POST, even an empty one (it gets "required" errors, not a 400 without a message).
    form = PersonalRuleForm(request.POST if request.method == "POST" else None, instance=rule)
    if request.method == "POST" and form.is_valid():
        fields = {name: form.cleaned_data[name] for name in form.Meta.fields}
        try:
            if rule is None:
                name, expression = fields.pop("name"), fields.pop("expression")
                alert_services.create_personal_rule(request.user, name=name, expression=expression, **fields)
            else:
                alert_services.update_rule(rule, **fields)
        except ValidationError as error:
            _add_model_errors(form, error)
        else:
            messages.success(request, f"Rule {fields.get('name') or form.cleaned_data['name']} saved.")
            return redirect("settings")
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "gateway/rule_form.html",
        _page_context(request, "settings", form=form, rule=rule),
        status=status,
    )


def _add_model_errors(form: PersonalRuleForm, error: ValidationError) -> None:
    if hasattr(error, "error_dict"):
        for field, errors in error.message_dict.items():
            target = field if field in form.fields else None
            for message in errors:
                if field == "slug" and "already exists" in message:
                    message = "you already have a rule with this name"
                form.add_error(target, message)
    else:
        for message in error.messages:
            form.add_error(None, message)


@settings_page_view
@require_POST
def rule_delete(request: HttpRequest, rule_id: int) -> HttpResponse:
    rule = selectors.personal_rule(request.user, rule_id)
    if rule is None:
        raise Http404("no such rule of yours")
    alert_services.delete_personal_rule(rule)
    messages.success(request, f"Rule {rule.name} deleted.")
    return redirect("settings")


@login_required
@require_POST
def rule_check(request: HttpRequest) -> JsonResponse:
    """The editor's live check: the rule language's own message and column, or the metrics it uses."""
    expression = request.POST.get("expression", "")
    try:
        compiled = compile_rule(expression)
    except RuleError as error:
        return JsonResponse({"ok": False, "message": str(error), "column": error.column})
    return JsonResponse({"ok": True, "message": "valid", "metrics": list(compiled.metric_order)})


@login_required
@require_POST
def rule_preview(request: HttpRequest) -> JsonResponse:
    """Backtest preview of the rule being edited over stored candles (the watchlist's symbols, if any).

    CPU-bound, so rate limited per user (PREVIEW_RATE_LIMIT_PER_MINUTE, a 429 naming it) and bounded per
    request by `backtest_preview` (the response says what was cut: `truncated`, `truncated_by`)."""
    limit = settings.PREVIEW_RATE_LIMIT_PER_MINUTE
    wait = limits.take("preview", f"user:{request.user.pk}", limit)
    if wait:
        message = f"at most {limit} previews a minute (PREVIEW_RATE_LIMIT_PER_MINUTE); try again in {wait} s"
        return JsonResponse(
            {"ok": False, "message": message, "limit": "PREVIEW_RATE_LIMIT_PER_MINUTE"},
            status=429,
            headers={"Retry-After": str(wait)},
        )
    cooldown = _whole_number(request.POST.get("cooldown_seconds") or "300")
    if cooldown is None:
        message = "cooldown_seconds: must be a whole number of seconds (digits 0-9, at most 12)"
        return JsonResponse({"ok": False, "message": message, "parameter": "cooldown_seconds"}, status=400)
    watchlist = list(selectors.user_settings(request.user).watchlist or []) or None
    try:
        preview = alert_services.backtest_preview(request.POST.get("expression", ""), cooldown, watchlist)
    except RuleError as error:
        return JsonResponse({"ok": False, "message": str(error), "column": error.column})
    return JsonResponse(preview.as_json())
