"""A token bucket per client, shared by every replica through one atomic Lua script.

Each client (``X-Client-Id`` header, else its IP) has a bucket of ``burst`` tokens that
refills at ``requests_per_second``; a request takes one token or is refused with the
time until one is back. The script reads Redis' own clock (``TIME``), so replicas with
skewed clocks still share one consistent bucket. The limit settings themselves live in
Redis too (``agent:ratelimit:settings``) so ``POST /admin/rate-limit`` reaches the whole
fleet within a second.

Example:
    >>> RateDecision(allowed=False, retry_after_s=0.25).retry_after_header
    '1'
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from agentverify.reference_agent.shared import SharedSetting
from agentverify.seed import RateLimitSection

__all__ = [
    "BUCKET_PREFIX",
    "SETTINGS_KEY",
    "RateDecision",
    "RateLimitError",
    "RateLimiter",
    "rate_limit_setting",
]

SETTINGS_KEY = "agent:ratelimit:settings"
BUCKET_PREFIX = "agent:ratelimit:bucket:"

# KEYS[1] = bucket; ARGV = rate (tokens/s), burst, cost.
# Returns {allowed 0|1, microseconds until enough tokens are back}.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = tokens + (now - ts) * rate / 1000000
  ts = now
end
if tokens > burst then
  tokens = burst
end
local allowed = 0
local wait_us = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait_us = math.ceil((cost - tokens) * 1000000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, wait_us}
"""


class RateLimitError(Exception):
    """Redis could not run the bucket script (the caller decides to fail open)."""


@dataclass(frozen=True)
class RateDecision:
    """The answer for one request.

    Attributes:
        allowed: Whether the request may proceed.
        retry_after_s: Seconds until a token is back (0 when allowed).
    """

    allowed: bool
    retry_after_s: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` value: whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


def rate_limit_setting(
    redis: Any, default: RateLimitSection, ttl: float = 0.25
) -> SharedSetting[RateLimitSection]:
    """The fleet-wide rate-limit settings, stored as JSON under :data:`SETTINGS_KEY`."""
    return SharedSetting(
        redis,
        SETTINGS_KEY,
        default=default,
        parse=RateLimitSection.model_validate_json,
        dump=lambda value: value.model_dump_json(),
        ttl=ttl,
    )


def bucket_key(client_id: str) -> str:
    """The Redis key of one client's bucket (long or odd ids are hashed)."""
    if len(client_id) <= 128 and client_id.isprintable() and " " not in client_id:
        return BUCKET_PREFIX + client_id
    return BUCKET_PREFIX + "sha256:" + hashlib.sha256(client_id.encode()).hexdigest()


class RateLimiter:
    """Token buckets in Redis.

    Args:
        redis: An async Redis client with ``register_script``.
    """

    def __init__(self, redis: Any) -> None:
        """Register the Lua script on the client; see the class docstring."""
        self._script = redis.register_script(TOKEN_BUCKET_LUA)

    async def check(self, client_id: str, settings: RateLimitSection) -> RateDecision:
        """Take one token from the client's bucket, or say how long to wait.

        Raises:
            RateLimitError: Redis failed.
        """
        if not settings.enabled:
            return RateDecision(allowed=True)
        try:
            allowed, wait_us = await self._script(
                keys=[bucket_key(client_id)],
                args=[repr(float(settings.requests_per_second)), settings.burst, 1],
            )
        except (RedisError, OSError) as exc:
            raise RateLimitError(f"rate limiter: {type(exc).__name__}: {exc}") from exc
        if int(allowed) == 1:
            return RateDecision(allowed=True)
        return RateDecision(allowed=False, retry_after_s=int(wait_us) / 1_000_000)
