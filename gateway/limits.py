"""Per-client rate limits shared by every web process (counted in Redis).

A sliding window (a sorted set of the last minute's request times per client): unlike a per-minute
counter it never lets 2× the limit through across a minute boundary, and a test of it does not depend on
when in the minute it runs. If Redis is unreachable the request is served and the failure logged (as the
JSON API does): the per-request bounds still hold, and the limit is back with Redis.
"""

from __future__ import annotations

import logging
import math
import uuid

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

_SLIDING = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tostring(tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
return '0'
"""

_redis: redis.Redis | None = None


def _client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    return _redis


def take(name: str, client: str, limit: int, window_seconds: float = 60.0) -> int:
    """Count one action of `client` under `name`: 0 when allowed, else the whole seconds to wait."""
    key = f"cryptomon:limit:{name}:{client}"
    try:
        wait = float(_client().eval(_SLIDING, 1, key, limit, window_seconds, uuid.uuid4().hex))
    except redis.RedisError as error:
        logger.warning("rate limit %s not counted (Redis unreachable): %s", name, error)
        return 0
    return max(1, math.ceil(wait)) if wait > 0 else 0
