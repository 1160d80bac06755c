"""Reading configuration from the environment, with one clear line per mistake.

Settings call these readers; manage.py turns a ConfigurationError into a one-line message naming the
variable instead of a traceback.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, unquote, urlsplit


class ConfigurationError(Exception):
    """A configuration variable is missing or malformed."""


# Every variable the settings asked for, in the order asked: the one list of what configures cryptomon.
# tests/test_compose.py checks that docker-compose.yml sets nothing outside it.
VARIABLES_READ: dict[str, None] = {}


def env_raw(name: str) -> str | None:
    """The variable's value as set (None when unset); every reader below goes through here."""
    VARIABLES_READ[name] = None
    return os.environ.get(name)


def env_str(name: str, default: str | None = None) -> str:
    value = env_raw(name)
    if value is None or value == "":
        if default is None:
            raise ConfigurationError(f"{name} is not set")
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    value = (env_raw(name) or "").strip().lower()
    if not value:
        return default
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{name} must be true or false (got {value!r})")


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    value = (env_raw(name) or "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer (got {value!r})") from None
    if minimum is not None and number < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum} (got {number})")
    return number


def env_float(name: str, default: float, minimum: float | None = None) -> float:
    value = (env_raw(name) or "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number (got {value!r})") from None
    if minimum is not None and number < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum} (got {number})")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = (env_raw(name) or "").strip()
    if not value:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_ports(name: str) -> list[int]:
    """A comma-separated list of TCP ports (1-65535); empty when unset."""
    ports = []
    for item in env_list(name, []):
        if not item.isascii() or not item.isdigit() or not 1 <= int(item) <= 65535:
            raise ConfigurationError(f"{name} must list TCP ports 1-65535 separated by commas (got {item!r})")
        ports.append(int(item))
    return ports


def database_from_url(name: str, url: str) -> dict:
    """A Django DATABASES entry from a postgresql:// URL (host may be a Unix socket directory)."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ConfigurationError(
            f"{name} must be a postgresql:// URL (got scheme {parts.scheme or 'none'!r})"
        )
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    host = query.pop("host", None) or unquote(parts.hostname or "")
    try:
        port = query.pop("port", None) or (parts.port and str(parts.port)) or ""
    except ValueError:
        raise ConfigurationError(f"{name} has an invalid port") from None
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ConfigurationError(f"{name} names no database (expected postgresql://user@host/dbname)")
    if not host:
        raise ConfigurationError(f"{name} names no host (use ?host=/socket/dir for a Unix socket)")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": database,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": port,
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": query,
    }


def shown_url(url: str) -> str:
    """A URL fit for an error message: whatever precedes `@` in its authority (password, token) masked."""
    scheme, sep, rest = url.partition("://")
    authority, at, host = rest.partition("@")
    if not sep or not at or "/" in authority:
        return url
    user = authority.split(":", 1)[0] if ":" in authority else ""
    return f"{scheme}://{user}:***@{host}" if user else f"{scheme}://***@{host}"


def check_url(name: str, url: str, schemes: set[str]) -> str:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        wanted = " or ".join(f"{scheme}://" for scheme in sorted(schemes))
        raise ConfigurationError(f"{name} must be a {wanted} URL with a host (got {shown_url(url)!r})")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigurationError(f"{name} has an invalid port (got {shown_url(url)!r})") from None
    return url


def check_url_list(name: str, value: str, schemes: set[str]) -> str:
    """A comma-separated list of URLs (a cluster's servers), each checked like `check_url`."""
    urls = [part.strip() for part in value.split(",")]
    if not all(urls):
        raise ConfigurationError(f"{name} has an empty entry in its comma-separated list")
    for url in urls:
        check_url(name, url, schemes)
    return ",".join(urls)
