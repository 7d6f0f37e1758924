"""Settings every replica follows, kept in Redis and cached in-process for <= 0.25 s.

The runbooks change things at runtime for the whole fleet (enable rate limiting,
switch to the backup LLM). Each replica reads the value from Redis at most once per
``ttl`` seconds; when Redis cannot be read it keeps the last value it saw (or the
configured default), so an outage of Redis never changes behaviour by itself. (A Redis
that answers slowly costs a request one slow read per ``ttl``: the shorter the ``ttl``,
the more requests wait for it.)

Example:
    >>> import asyncio
    >>> class FakeRedis:
    ...     def __init__(self): self.data = {}
    ...     async def get(self, k): return self.data.get(k)
    ...     async def set(self, k, v): self.data[k] = v
    >>> s = SharedSetting(FakeRedis(), "k", default="primary", parse=str, dump=str)
    >>> asyncio.run(s.get())
    'primary'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from redis.exceptions import RedisError

__all__ = ["SharedSetting", "SharedSettingError"]

T = TypeVar("T")
log = logging.getLogger("agentverify.reference_agent")


class SharedSettingError(Exception):
    """Redis did not accept a new value for a shared setting."""


class SharedSetting(Generic[T]):
    """One value stored under a Redis key, read through a short in-process cache.

    Args:
        redis: An async Redis client (``get``/``set``) with ``decode_responses=True``.
        key: The Redis key.
        default: The value while the key is absent (the configured one).
        parse: Turns the stored string into a value; raising ``ValueError`` (or a
            pydantic ``ValidationError``, which is one) means "ignore, use default".
        dump: Turns a value into the stored string.
        ttl: Longest time a replica serves a value without re-reading Redis.
        clock: Monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        redis: Any,
        key: str,
        *,
        default: T,
        parse: Callable[[str], T],
        dump: Callable[[T], str],
        ttl: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the setting; see the class docstring."""
        self._redis = redis
        self.key = key
        self._default = default
        self._parse = parse
        self._dump = dump
        self._ttl = ttl
        self._clock = clock
        self._value: T = default
        self._fetched_at: float | None = None

    async def get(self) -> T:
        """The current value, re-read from Redis when the cached one is older than ttl."""
        now = self._clock()
        if self._fetched_at is not None and now - self._fetched_at < self._ttl:
            return self._value
        # Set before awaiting: concurrent requests in this window reuse the old value
        # instead of all hitting Redis at once.
        self._fetched_at = now
        try:
            raw = await self._redis.get(self.key)
        except (RedisError, OSError) as exc:
            log.warning("shared setting %s: Redis unreadable (%s); keeping the last value",
                        self.key, type(exc).__name__)
            return self._value
        if raw is None:
            self._value = self._default
        else:
            try:
                self._value = self._parse(raw)
            except ValueError:
                log.warning("shared setting %s: ignoring an invalid stored value", self.key)
                self._value = self._default
        return self._value

    async def set(self, value: T) -> None:
        """Store a new value for every replica (and use it here at once).

        Raises:
            SharedSettingError: Redis refused or did not answer.
        """
        try:
            await self._redis.set(self.key, self._dump(value))
        except (RedisError, OSError) as exc:
            raise SharedSettingError(
                f"could not store {self.key} in Redis: {type(exc).__name__}: {exc}"
            ) from exc
        self._value = value
        self._fetched_at = self._clock()
