"""`python manage.py check_infra`: one line per dependency with ✓ or ✗ and the reason."""

from django.core.management.base import BaseCommand, CommandError

from cryptomon.health import run_all


class Command(BaseCommand):
    help = "Check the databases, NATS, JetStream and its streams, and Redis."

    def handle(self, *args, **options):
        checks = run_all()
        for check in checks:
            mark = "✓" if check.ok else "✗"
            self.stdout.write(f"{mark} {check.name}: {check.detail}")
        failed = [check.name for check in checks if not check.ok]
        if failed:
            raise CommandError(f"{len(failed)} check(s) failed: {', '.join(failed)}")
