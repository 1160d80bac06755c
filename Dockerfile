# The image every compose service runs (docs/operations.md). No secret is baked in: settings come from the
# environment at run time; .dockerignore keeps .venv, var/ (embedded data and credentials), .git and .env out.

# The dashboard's chart library from the npm registry (no CDN), with its licence.
FROM node:20-slim AS vendor
WORKDIR /build
COPY scripts/setup-browser.sh scripts/
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends bash >/dev/null \
    && mkdir -p static && bash scripts/setup-browser.sh --vendor-only

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/app
WORKDIR /app
# Dependencies only, in their own layer (rebuilt when pyproject.toml changes, not on every code change):
# the project itself runs from /app, one copy, so templates/ and static/ sit next to the code.
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir . && pip uninstall -y -q cryptomon && rm -rf build ./*.egg-info
COPY . .
COPY --from=vendor /build/static/vendor static/vendor
# Static files collected at build time (WhiteNoise serves them from var/static). The two variables exist only
# for this command, so settings load without the embedded servers; they are not secrets and not kept.
RUN DATABASE_URL=postgresql://build@localhost/build SECRET_KEY=collectstatic-only \
    python manage.py collectstatic --noinput -v 0
# A non-root user owns only var/ (Celery beat's schedule, collected static files); the code stays root's.
RUN useradd --create-home --uid 10001 cryptomon && mkdir -p var && chown -R cryptomon var
USER cryptomon
EXPOSE 8000
CMD ["daphne", "--proxy-headers", "-b", "0.0.0.0", "-p", "8000", "cryptomon.asgi:application"]
