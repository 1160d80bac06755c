"""What every entry point does before Django loads: embedded servers on first need, clear config errors."""

from __future__ import annotations

import sys

from cryptomon.config import ConfigurationError

# Commands that never touch PostgreSQL, NATS or Redis: starting servers for them would be a surprise.
# `embedded` inspects and stops the embedded servers itself (docs/operations.md).
SERVERLESS_COMMANDS = frozenset(
    {
        "help",
        "run_emulator",
        "version",
        "--help",
        "-h",
        "--version",
        "makemigrations",
        "collectstatic",
        "embedded",
    }
)
HELP_FLAGS = frozenset({"-h", "--help"})


def needs_servers(argv: list[str]) -> bool:
    command = argv[1] if len(argv) > 1 else "help"
    if command in SERVERLESS_COMMANDS:
        return False
    if any(arg in HELP_FLAGS for arg in argv[2:]):
        return False  # `<command> --help` prints and exits: no server to start for that
    if command == "backtest":
        # docs/contract.md §9: presets over input files need no server at all.
        args = argv[2:]
        has_input = any(arg == "--input" or arg.startswith("--input=") for arg in args)
        rules = next((args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--rules"), None)
        rules = next((arg.split("=", 1)[1] for arg in args if arg.startswith("--rules=")), rules)
        return not (has_input and rules == "presets")
    return True


def prepare(argv: list[str]) -> None:
    """Start or reuse the embedded servers if needed, then load settings, turning errors into one line."""
    try:
        if needs_servers(argv):
            from cryptomon.embedded import configure_environment

            configure_environment()
        from django.conf import settings

        settings.INSTALLED_APPS  # noqa: B018 - forces the settings module to load now
    except ConfigurationError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
