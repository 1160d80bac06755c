"""Email through Django's email backend (EMAIL_* settings)."""

from __future__ import annotations

import smtplib

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage
from django.core.validators import validate_email

from notifications.base import Message, PermanentError, RejectedError, TransientError
from notifications.crypto import mask

KIND = "email"


def clean_config(data: dict) -> dict:
    address = str(data.get("address") or "").strip()
    try:
        validate_email(address)
    except ValidationError:
        raise ValueError("enter a valid email address") from None
    return {"address": address}


def summary(config: dict) -> str:
    return f"address {mask(config.get('address'))}"


def send(config: dict, message: Message) -> None:
    email = EmailMessage(
        subject=message.title,
        body=message.text(200_000),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[config["address"]],
        headers={"X-Cryptomon-Idempotency-Key": message.idempotency_key} if message.idempotency_key else {},
    )
    try:
        email.send(fail_silently=False)
    except smtplib.SMTPRecipientsRefused:
        raise PermanentError("the mail server refused the address") from None
    except smtplib.SMTPResponseException as error:
        text = f"the mail server answered {error.smtp_code}"
        if 500 <= error.smtp_code < 600:
            raise RejectedError(text) from None
        raise TransientError(text) from None
    except (smtplib.SMTPException, OSError) as error:
        raise TransientError(f"sending mail failed: {error.__class__.__name__}") from None
