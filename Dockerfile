# The dashboard's chart library from the npm registry (no CDN), with its licence.
FROM node:20-slim AS vendor
WORKDIR /build
COPY scripts/setup-browser.sh scripts/
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends bash >/dev/null \
    && mkdir -p static && bash scripts/setup-browser.sh --vendor-only

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cryptomon cryptomon
COPY collector collector
COPY metrics metrics
COPY alerts alerts
COPY gateway gateway
RUN pip install --no-cache-dir .
COPY . .
COPY --from=vendor /build/static/vendor static/vendor
RUN useradd --create-home cryptomon && chown -R cryptomon /app
USER cryptomon
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "cryptomon.asgi:application"]
