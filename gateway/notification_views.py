"""Settings → Notifications: sign-up, a user's own channels (Telegram connect, pasted URLs, email),
their routing, send test, and the Telegram webhook. Thin: reads in notifications.selectors, writes in
notifications.services (docs/notifications.md, docs/user-guide.md).

Secrets are write-only: pages show `channel.masked`; a webhook's signing secret is shown once, in the
answer to the request that created it.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from gateway import limits
from gateway import selectors as gateway_selectors
from gateway.forms import ChannelAddForm, ChannelForm, SignUpForm
from gateway.views import _page_context, settings_page_view
from notifications import selectors, services, telegram_bot
from notifications.models import NotificationChannel

logger = logging.getLogger(__name__)

MAX_UPDATE_BYTES = 64 * 1024  # a Telegram update is a few KB


def limited_action(view):
    """At most NOTIFICATIONS_ACTIONS_PER_MINUTE sends, links and new channels per user (a 429 naming it)."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        limit = settings.NOTIFICATIONS_ACTIONS_PER_MINUTE
        wait = limits.take("notification-actions", f"user:{request.user.pk}", limit)
        if wait:
            message = (
                f"at most {limit} tests, links and new channels a minute "
                f"(NOTIFICATIONS_ACTIONS_PER_MINUTE); try again in {wait} s"
            )
            return HttpResponse(
                message, status=429, content_type="text/plain", headers={"Retry-After": str(wait)}
            )
        return view(request, *args, **kwargs)

    return wrapper


# --- sign-up --------------------------------------------------------------------------------------


def signup(request: HttpRequest) -> HttpResponse:
    """A new trader's account; signed in at once and sent to Settings → Notifications."""
    if not settings.SIGNUP_ENABLED:
        raise Http404("sign-up is off on this server")
    if request.user.is_authenticated:
        return redirect("notifications")
    form = SignUpForm(request.POST or None)
    if request.method == "POST":
        limit = settings.SIGNUP_RATE_LIMIT_PER_HOUR
        wait = limits.take("signup", f"ip:{request.META.get('REMOTE_ADDR', '')}", limit, 3600)
        if wait:
            message = f"at most {limit} sign-ups an hour from one address; try again in {wait} s"
            return HttpResponse(
                message, status=429, content_type="text/plain", headers={"Retry-After": str(wait)}
            )
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, f"Welcome, {user.get_username()}. Connect a channel to get alerts.")
        return redirect("notifications")
    status = 400 if request.method == "POST" else 200
    return render(request, "registration/signup.html", {"form": form, "page": "signup"}, status=status)


# --- the channels page ----------------------------------------------------------------------------


def _rows(user) -> list[dict]:
    return [
        {"channel": channel, "last": selectors.last_delivery(channel)}
        for channel in selectors.channels_of(user)
    ]


def _notifications_page(request: HttpRequest, status: int = 200, **extra) -> HttpResponse:
    context = _page_context(
        request,
        "settings",
        rows=_rows(request.user),
        add_form=extra.pop("add_form", None) or ChannelAddForm(),
        max_channels=settings.NOTIFICATIONS_MAX_CHANNELS_PER_USER,
        telegram_ready=bool(settings.TELEGRAM_BOT_TOKEN and settings.TELEGRAM_BOT_USERNAME),
        **extra,
    )
    return render(request, "gateway/notifications.html", context, status=status)


@settings_page_view
def notifications_page(request: HttpRequest) -> HttpResponse:
    return _notifications_page(request)


@settings_page_view
@require_POST
@limited_action
def connect_telegram(request: HttpRequest) -> HttpResponse:
    """A fresh one-time deep link to the bot (Telegram binds the chat when the user presses Start)."""
    if not (settings.TELEGRAM_BOT_TOKEN and settings.TELEGRAM_BOT_USERNAME):
        return _notifications_page(request, status=503, error="Telegram is not set up on this server.")
    try:
        token = services.start_telegram_link(request.user)
    except services.ChannelError as error:
        return _notifications_page(request, status=400, error=str(error))
    expires = timezone.now() + timedelta(seconds=settings.TELEGRAM_LINK_TTL_SECONDS)
    return _notifications_page(
        request, telegram_link=services.telegram_deep_link(token), telegram_link_expires=expires
    )


@settings_page_view
@require_POST
@limited_action
def add_channel(request: HttpRequest) -> HttpResponse:
    form = ChannelAddForm(request.POST)
    if not form.is_valid():
        return _notifications_page(request, status=400, add_form=form)
    data = form.cleaned_data
    try:
        channel = services.add_channel(request.user, data["kind"], data["name"].strip(), data)
    except services.ChannelError as error:
        form.add_error(None, str(error))
        return _notifications_page(request, status=400, add_form=form)
    if channel.kind == NotificationChannel.Kind.EMAIL:
        _send_verification(request, channel)
        messages.success(request, "Check your mailbox: open the link we sent to confirm the address.")
        return redirect("channel", channel.pk)
    if channel.kind == NotificationChannel.Kind.WEBHOOK:  # the one time the secret is shown
        return _channel_page(request, channel, new_secret=channel.config["secret"])
    messages.success(request, f"{channel} added. Send a test to check it.")
    return redirect("channel", channel.pk)


def _send_verification(request: HttpRequest, channel: NotificationChannel) -> None:
    token = services.email_verification_token(channel)
    link = request.build_absolute_uri(reverse("verify_email", args=[token]))
    try:
        services.send_email_verification(channel, link)
    except OSError as error:  # smtplib errors are OSErrors
        logger.warning("verification mail for channel %s failed: %s", channel.pk, error.__class__.__name__)
        messages.error(request, "The confirmation mail could not be sent; try Resend later.")


def verify_email(request: HttpRequest, token: str) -> HttpResponse:
    """The link in the confirmation mail (works signed out: the signed token is the proof)."""
    channel = services.verify_email(token)
    if channel is None:
        return render(
            request,
            "gateway/verify_email.html",
            {"ok": False, "page": "settings"},
            status=400,
        )
    return render(request, "gateway/verify_email.html", {"ok": True, "channel": channel, "page": "settings"})


# --- one channel ----------------------------------------------------------------------------------


def _own_channel(request: HttpRequest, channel_id: int) -> NotificationChannel:
    channel = selectors.channel_of(request.user, channel_id)
    if channel is None:
        raise Http404("no such channel of yours")
    return channel


def _channel_page(
    request: HttpRequest, channel: NotificationChannel, status: int = 200, form=None, **extra
) -> HttpResponse:
    form = form or ChannelForm(instance=channel, rules=gateway_selectors.rule_choices(request.user))
    context = _page_context(
        request,
        "settings",
        channel=channel,
        form=form,
        deliveries=selectors.recent_deliveries(channel),
        counters=selectors.cap_counters(channel),
        **extra,
    )
    return render(request, "gateway/channel.html", context, status=status)


@settings_page_view
def channel_page(request: HttpRequest, channel_id: int) -> HttpResponse:
    channel = _own_channel(request, channel_id)
    if request.method != "POST":
        return _channel_page(request, channel)
    form = ChannelForm(request.POST, instance=channel, rules=gateway_selectors.rule_choices(request.user))
    if not form.is_valid():
        channel.refresh_from_db()
        return _channel_page(request, channel, status=400, form=form)
    services.update_channel(channel, **{name: form.cleaned_data[name] for name in form.Meta.fields})
    messages.success(request, f"{channel} saved.")
    return redirect("channel", channel.pk)


@settings_page_view
@require_POST
@limited_action
def test_channel(request: HttpRequest, channel_id: int) -> HttpResponse:
    """Send a test now; the result (delivered, or the remote's error in one line) shows on the page."""
    channel = _own_channel(request, channel_id)
    result = services.send_test(channel)
    channel.refresh_from_db()
    return _channel_page(request, channel, test_result=result)


@settings_page_view
@require_POST
@limited_action
def resend_verification(request: HttpRequest, channel_id: int) -> HttpResponse:
    channel = _own_channel(request, channel_id)
    if channel.kind == NotificationChannel.Kind.EMAIL and not channel.verified:
        _send_verification(request, channel)
        messages.success(request, "Confirmation mail sent again.")
    return redirect("channel", channel.pk)


@settings_page_view
@require_POST
def delete_channel(request: HttpRequest, channel_id: int) -> HttpResponse:
    channel = _own_channel(request, channel_id)
    services.delete_channel(channel)
    messages.success(request, f"{channel} deleted.")
    return redirect("notifications")


# --- the Telegram webhook -------------------------------------------------------------------------


@csrf_exempt  # Telegram cannot send a CSRF token; the secret token header is the proof
@require_POST
def telegram_webhook(request: HttpRequest) -> HttpResponse:
    """Updates POSTed by Telegram (TELEGRAM_WEBHOOK_URL); the secret token header, compared in constant
    time, must match TELEGRAM_WEBHOOK_SECRET."""
    if not telegram_bot.secret_matches(request.headers.get("X-Telegram-Bot-Api-Secret-Token")):
        return JsonResponse({"error": "bad or missing X-Telegram-Bot-Api-Secret-Token"}, status=403)
    if len(request.body) > MAX_UPDATE_BYTES:  # the body itself is bounded by DATA_UPLOAD_MAX_MEMORY_SIZE
        return JsonResponse({"error": f"an update is at most {MAX_UPDATE_BYTES} bytes"}, status=413)
    try:
        update = json.loads(request.body)
    except ValueError:
        return JsonResponse({"error": "the body is not JSON"}, status=400)
    telegram_bot.handle_update(update)
    return JsonResponse({"ok": True})
