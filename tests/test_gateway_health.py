"""`/healthz` and `/readyz` on the web app (cryptomon.health checks, gateway.views): probes an orchestrator
can act on."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"])


def test_readyz_is_503_and_names_nats_while_nats_is_down(client, settings, private_nats):
    settings.NATS_URL = private_nats.url
    assert client.get("/readyz").status_code == 200
    private_nats.stop()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["NATS"]["ok"] is False and private_nats.url in body["checks"]["NATS"]["detail"]
    assert body["checks"]["Redis"]["ok"] is True and body["checks"]["metadata database"]["ok"] is True
    assert client.get("/healthz").status_code == 200  # the process itself is fine: no restart


def test_readyz_is_503_and_names_redis_while_redis_is_unreachable(client, settings):
    settings.REDIS_URL = "redis://:s3cret@127.0.0.1:1/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    redis = response.json()["checks"]["Redis"]
    assert redis["ok"] is False and "127.0.0.1:1" in redis["detail"]
    assert "s3cret" not in response.content.decode()  # never the password
