"""The answer cache in Redis: ``support:answer:<sha256>`` -> the answer as JSON, with a TTL.

The cache is an optimisation: every error is raised as :class:`CacheError` and the API
treats it as a miss, so a request still answers while Redis is down. Calls have a short
timeout for the same reason (a hung Redis must not hang the answers).

Example:
    >>> answer_key("gpt-4o-mini", "support_kb", "  How do I RESET my hub? ")[:15]
    'support:answer:'
    >>> answer_key("m", "c", "How do I reset my hub?") == answer_key("m", "c", "how do i  reset my hub?")
    True
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

__all__ = ["PREFIX", "AnswerCache", "CacheError", "answer_key", "make_redis"]

PREFIX = "support:answer:"


class CacheError(Exception):
    """Redis failed or answered something that is not a cached answer; one line."""


def make_redis(url: str, timeout: float) -> aioredis.Redis:
    """An asyncio Redis client with short timeouts and one immediate retry.

    The retry covers a pooled connection that went stale when Redis restarted.
    """
    return aioredis.Redis.from_url(
        url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
    )


def answer_key(model: str, collection: str, question: str) -> str:
    """The cache key of a question: the same question in other case or spacing hits it.

    The model and collection are part of the key, so switching to a backup model or
    another knowledge base does not serve the old answers.
    """
    normal = " ".join(question.split()).casefold()
    digest = hashlib.sha256(f"{model}\0{collection}\0{normal}".encode()).hexdigest()
    return PREFIX + digest


class AnswerCache:
    """Get and put answers (JSON objects) under :func:`answer_key`.

    Args:
        client: A ``redis.asyncio.Redis`` with ``decode_responses=True``.
        ttl: Seconds an answer is kept (``SETEX``).

    Example:
        >>> AnswerCache(make_redis("redis://127.0.0.1:1/0", 0.1), ttl=60).ttl
        60
    """

    def __init__(self, client: Any, ttl: int) -> None:
        """Wrap ``client``; nothing connects until the first call."""
        self._redis = client
        self.ttl = ttl

    async def get(self, key: str) -> dict[str, Any] | None:
        """The cached answer under ``key``, or None on a miss.

        Raises:
            CacheError: Redis failed, or the value is not a JSON object.
        """
        try:
            raw = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            raise CacheError(f"Redis GET failed: {type(exc).__name__}: {exc}") from exc
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            raise CacheError(f"Redis {key}: not JSON") from None
        if not isinstance(value, dict):
            raise CacheError(f"Redis {key}: not a JSON object")
        return value

    async def put(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds.

        Raises:
            CacheError: Redis failed.
        """
        try:
            await self._redis.setex(key, self.ttl, json.dumps(value, separators=(",", ":")))
        except (RedisError, OSError) as exc:
            raise CacheError(f"Redis SETEX failed: {type(exc).__name__}: {exc}") from exc
