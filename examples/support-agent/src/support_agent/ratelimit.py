"""A token bucket per client, kept in Redis so every replica shares it.

Each client has a bucket of ``burst`` tokens refilled at ``requests_per_second``; a request
takes one token or is refused with the time until the next one. The whole read-refill-take
step is one Lua script, so it is atomic across replicas, and it reads Redis' clock, so
replicas with skewed clocks agree. A client is the ``X-Customer-Id`` header, else the first
``X-Forwarded-For`` address, else the peer address.

If Redis fails, the limiter lets the request through (fail open): refusing every customer
because the limiter's store is down would be worse than not limiting for a while.

Example:
    >>> Decision(allowed=False, retry_after_ms=1200).retry_after
    '2'
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

__all__ = ["BUCKET_PREFIX", "Decision", "RateLimiter", "RateLimitUnavailable"]

BUCKET_PREFIX = "support:ratelimit:"

# KEYS[1]: the bucket (a hash of tokens + stamp in ms); ARGV: refill per second, capacity.
# Returns {1, 0} when a token was taken, else {0, ms until one is back}.
_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(saved[1]) or capacity
local stamp = tonumber(saved[2]) or now
if now > stamp then
  tokens = math.min(capacity, tokens + (now - stamp) * rate / 1000)
end
local allowed, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(math.max(now, stamp)))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity * 1000 / rate) + 1000)
return {allowed, wait}
"""


class RateLimitUnavailable(Exception):
    """Redis could not decide; the caller lets the request through."""


@dataclass(frozen=True)
class Decision:
    """The limiter's answer for one request."""

    allowed: bool
    retry_after_ms: int = 0

    @property
    def retry_after(self) -> str:
        """``Retry-After`` in whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(self.retry_after_ms / 1000)))


class RateLimiter:
    """Take one token from a client's bucket.

    Args:
        client: A ``redis.asyncio.Redis``.
        requests_per_second: Refill rate.
        burst: Capacity.

    Example:
        >>> from support_agent.cache import make_redis
        >>> RateLimiter(make_redis("redis://127.0.0.1:6379/0", 0.5), 2.0, 5).burst
        5
    """

    def __init__(self, client: Any, requests_per_second: float, burst: int) -> None:
        """Register the script (it is loaded into Redis on first use)."""
        self._script = client.register_script(_BUCKET_LUA)
        self.rate = requests_per_second
        self.burst = burst

    async def take(self, client_id: str) -> Decision:
        """Take a token for ``client_id``.

        Raises:
            RateLimitUnavailable: Redis failed.
        """
        key = BUCKET_PREFIX + hashlib.sha256(client_id.encode()).hexdigest()[:32]
        try:
            allowed, wait = await self._script(keys=[key], args=[repr(self.rate), str(self.burst)])
        except (RedisError, OSError) as exc:
            raise RateLimitUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return Decision(allowed=bool(int(allowed)), retry_after_ms=int(wait))
