"""`python manage.py backtest [--input PATH ...] [--symbol SYMBOL] [--rules all|presets|SLUG,SLUG]
[--output PATH|-]`: the alerts the live engine would have fired (docs/contract.md §9; see alerts/backtest.py).

Exit codes: 0 success (also with no alerts), 1 bad input (file and line named, nothing written), 2 usage.
"""

from __future__ import annotations

import sys
import time

from django.core.management.base import BaseCommand, CommandError

from alerts import backtest
from alerts.decisions import RuleSpec


def select_rules(selection: str) -> list[RuleSpec]:
    """`presets` (no database), `all` enabled rules, or the named slugs (enabled or not)."""
    if selection == "presets":
        from alerts.presets import preset_specs

        return list(preset_specs())
    from alerts.models import AlertRule

    if selection == "all":
        rows = list(AlertRule.objects.filter(enabled=True))
    else:
        slugs = [slug.strip() for slug in selection.split(",") if slug.strip()]
        if not slugs:
            raise backtest.UsageError("--rules needs all, presets or a comma-separated list of rule slugs")
        rows = list(AlertRule.objects.filter(slug__in=slugs))
        unknown = sorted(set(slugs) - {row.slug for row in rows})
        if unknown:
            raise backtest.UsageError(f"--rules: unknown rule slug(s): {', '.join(unknown)}")
    return [row.spec() for row in sorted(rows, key=lambda row: row.slug)]


class Progress:
    """A progress bar on standard error: redrawn in place on a terminal, a line per 10 % otherwise."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.step = -1

    def __call__(self, done: int, total: int, alerts: int) -> None:
        fraction = done / total if total else 1.0
        filled = int(fraction * 30)
        text = (
            f"backtest [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} symbols, {alerts} alert(s), "
            f"{time.monotonic() - self.started:.1f} s"
        )
        if self.tty:
            self.stream.write("\r" + text + ("\n" if done == total else ""))
        elif int(fraction * 10) != self.step or done == total:
            self.step = int(fraction * 10)
            self.stream.write(text + "\n")
        self.stream.flush()


class Command(BaseCommand):
    help = (
        "Replay candles (files or candles_1m) through the metrics and rules; print the alerts as JSON Lines."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument(
            "--input", action="append", default=[], metavar="PATH", help="CSV or JSON Lines candle file"
        )
        parser.add_argument("--symbol", default=None, help="only this symbol (CSV: the file's symbol)")
        parser.add_argument("--rules", default="all", help="all (enabled rules), presets, or SLUG,SLUG")
        parser.add_argument("--output", default="-", help="output file, or - for standard output")

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except backtest.UsageError as error:
            raise CommandError(f"usage error: {error}", returncode=2) from None
        except backtest.InputError as error:
            raise CommandError(f"bad input: {error}", returncode=1) from None

    def handle(self, *args, **options):
        inputs, symbol = options["input"], options["symbol"]
        if symbol is not None and not symbol.strip():
            raise backtest.UsageError("--symbol needs a symbol")
        rules = select_rules(options["rules"])
        processes = backtest.default_processes()
        progress = Progress(sys.stderr)
        if inputs:
            sources = backtest.plan_sources(inputs, symbol)
            sys.stderr.write(f"backtest: reading {len(sources)} file(s), {len(rules)} rule(s)\n")
            jobs = backtest.file_jobs(sources, symbol)
        else:
            jobs = [backtest.SymbolJob(name, from_database=True) for name in backtest.stored_symbols(symbol)]
            sys.stderr.write(f"backtest: candles_1m, {len(jobs)} symbol(s), {len(rules)} rule(s)\n")
        alerts = backtest.run_jobs(jobs, rules, inputs, processes, progress)
        backtest.write_alerts(alerts, options["output"])
        for line in backtest.summary(alerts, rules):
            sys.stderr.write(line + "\n")
