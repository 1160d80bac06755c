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
RUN useradd --create-home cryptomon && chown -R cryptomon /app
USER cryptomon
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "cryptomon.asgi:application"]
