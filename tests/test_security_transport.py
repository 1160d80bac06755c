"""Transport hardening (docs/security.md): outside the embedded/demo mode the settings are production-safe
by default — secure cookies, HSTS, HTTPS redirect, the TLS proxy's `X-Forwarded-Proto` trusted — and
`check --deploy` with production variables reports nothing. Each test runs a separate process with the
environment an operator would give it (settings are read once per process)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cryptomon.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
DAPHNE = [str(Path(sys.executable).parent / "daphne")]
# What the test session sets for itself (embedded servers, plain-HTTP overrides) is not production.
SESSION_ONLY = {
    "CRYPTOMON_EMBEDDED",
    "CRYPTOMON_EMBEDDED_STARTED",
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_PROXY_SSL_HEADER",
}


def production_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in SESSION_ONLY}
    env.update(
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="cryptomon.example.com,127.0.0.1",
        CSRF_TRUSTED_ORIGINS="https://cryptomon.example.com",
        DEBUG="false",
        DATABASE_URL=os.environ["DATABASE_URL"],
        NATS_URL=os.environ["NATS_URL"],
        REDIS_URL=os.environ["REDIS_URL"],
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def test_check_deploy_reports_nothing_with_production_variables():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr


def test_the_test_session_itself_would_not_pass_check_deploy():
    """The embedded/demo mode keeps plain HTTP on 127.0.0.1 working, so it is not production-safe."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**os.environ, "CRYPTOMON_EMBEDDED": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "security.W008" in result.stderr + result.stdout


@pytest.fixture(scope="module")
def production_server(tmp_path_factory):
    """daphne as the compose `web` service runs it, with production variables."""
    port = free_port()
    log = tmp_path_factory.mktemp("transport") / "daphne.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [*DAPHNE, "-b", "127.0.0.1", "-p", str(port), "cryptomon.asgi:application"],
            cwd=ROOT,
            env=production_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=15)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def fetch(url: str, **headers: str):
    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers={"Host": "cryptomon.example.com", **headers})
    try:
        return opener.open(request, timeout=10)
    except urllib.error.HTTPError as error:
        return error


def test_plain_http_is_redirected_to_https(production_server):
    response = fetch(f"{production_server}/login/")
    assert response.status == 301
    assert response.headers["Location"] == "https://cryptomon.example.com/login/"


def test_behind_the_tls_proxy_pages_carry_hsts_and_secure_cookies(production_server):
    response = fetch(f"{production_server}/login/", **{"X-Forwarded-Proto": "https"})
    assert response.status == 200
    hsts = response.headers["Strict-Transport-Security"]
    assert "max-age=31536000" in hsts and "includeSubDomains" in hsts and "preload" in hsts
    cookies = response.headers.get_all("Set-Cookie")
    csrf = next(cookie for cookie in cookies if cookie.startswith("csrftoken="))
    assert "Secure" in csrf


def test_probes_answer_over_plain_http_so_orchestrators_need_no_tls(production_server):
    assert fetch(f"{production_server}/healthz").status == 200
    assert fetch(f"{production_server}/readyz").status == 200


def test_compose_passes_the_public_origin_and_the_transport_overrides_to_the_app():
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    environment = compose["services"]["web"]["environment"]
    assert "CSRF_TRUSTED_ORIGINS" in environment
    assert {"SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"} <= set(environment)
