"""The transports by channel kind."""

from __future__ import annotations

from types import ModuleType

from notifications import discord, email, slack, telegram, webhook

TRANSPORTS: dict[str, ModuleType] = {
    module.KIND: module for module in (telegram, discord, slack, webhook, email)
}


def transport(kind: str) -> ModuleType:
    try:
        return TRANSPORTS[kind]
    except KeyError:
        raise ValueError(f"unknown channel kind {kind!r}") from None
