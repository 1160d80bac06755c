"""`python manage.py embedded status|stop`: the embedded servers a command left running (docs/operations.md).

A one-off command (`migrate`, `createsuperuser`, `check_infra`) starts the embedded PostgreSQL, NATS and
Valkey when none is configured and leaves them running for the next command to reuse; `run_monitor`
stops only those it started itself. `status` lists what `var/` records, with pids and addresses; `stop`
stops them (PostgreSQL with its fast shutdown, the others with SIGTERM), data kept. Neither starts
anything: bootstrap lists this command as serverless.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand

from cryptomon.embedded import default_var_dir, server_status, stop_servers


class Command(BaseCommand):
    help = "Show (status) or stop (stop) the embedded servers recorded in var/; data is kept."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["status", "stop"])

    def handle(self, *args, **options):
        var_dir = default_var_dir()
        if options["action"] == "stop":
            stopped = stop_servers(var_dir)
            if stopped:
                self.stdout.write(f"stopped {', '.join(stopped)} (data kept in {var_dir})")
            else:
                self.stdout.write(f"no embedded server was running (var dir {var_dir})")
            return
        found = server_status(var_dir)
        if not found:
            self.stdout.write(f"no embedded servers recorded in {var_dir}")
            return
        for server in found:
            state = "running" if server.running else "stopped"
            pid = f"pid {server.pid}" if server.running and server.pid else "-"
            self.stdout.write(f"{server.name:<9} {state:<8} {pid:<11} {server.address}  {server.url}")
