"""The answer cache in Redis: keys, normalisation, read/write and the admin clear.

A key is ``agent:answer:`` + sha256(model_name + "\\n" + normalised message), where
normalising strips, collapses whitespace and lowercases, so "What is  X?" and
"what is x?" share one answer. Redis failures surface as :class:`CacheError`; the chat
flow counts them and carries on without the cache.

Example:
    >>> normalise("  What is\\n  Milvus? ")
    'what is milvus?'
    >>> answer_key("gpt-4", "What is Milvus?") == answer_key("gpt-4", "what is  milvus?")
    True
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from redis.exceptions import RedisError

__all__ = ["ANSWER_PREFIX", "AnswerCache", "CacheError", "answer_key", "normalise"]

ANSWER_PREFIX = "agent:answer:"
_WHITESPACE = re.compile(r"\s+")


class CacheError(Exception):
    """Redis did not answer a cache operation (the message says which)."""


def normalise(message: str) -> str:
    """Strip, collapse runs of whitespace to one space, and lowercase."""
    return _WHITESPACE.sub(" ", message.strip()).lower()


def answer_key(model_name: str, message: str) -> str:
    """The Redis key of the cached answer to ``message`` from ``model_name``."""
    digest = hashlib.sha256(f"{model_name}\n{normalise(message)}".encode()).hexdigest()
    return ANSWER_PREFIX + digest


class AnswerCache:
    """Cached answers in Redis, stored as JSON with ``SETEX`` (``SET`` without a TTL).

    Args:
        redis: A ``redis.asyncio.Redis`` (or anything with ``get``, ``setex``,
            ``scan_iter``, ``unlink``), created with ``decode_responses=True``.
        ttl: Seconds an answer lives; None stores it without expiry (a defect knob:
            ``AGENT_CACHE_NO_TTL``).
    """

    def __init__(self, redis: Any, ttl: int | None) -> None:
        """Wrap a Redis client; see the class docstring."""
        self._redis = redis
        self._ttl = ttl

    async def get(self, key: str) -> dict[str, Any] | None:
        """Return the cached answer, or ``None`` on a miss (or an unreadable entry).

        Raises:
            CacheError: Redis failed.
        """
        try:
            raw = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            raise CacheError(f"cache read failed: {type(exc).__name__}: {exc}") from exc
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    async def put(self, key: str, value: dict[str, Any]) -> None:
        """Store an answer for ``ttl`` seconds (for ever when ``ttl`` is None).

        Raises:
            CacheError: Redis failed.
        """
        raw = json.dumps(value, separators=(",", ":"))
        try:
            if self._ttl is None:
                await self._redis.set(key, raw)
            else:
                await self._redis.setex(key, self._ttl, raw)
        except (RedisError, OSError) as exc:
            raise CacheError(f"cache write failed: {type(exc).__name__}: {exc}") from exc

    async def clear(self, batch: int = 500) -> int:
        """Delete every ``agent:answer:*`` key (SCAN, never KEYS) and return the count.

        Other keys (rate-limit buckets, shared settings) are left alone.

        Raises:
            CacheError: Redis failed.
        """
        deleted = 0
        pending: list[str] = []
        try:
            async for key in self._redis.scan_iter(match=ANSWER_PREFIX + "*", count=batch):
                pending.append(key)
                if len(pending) >= batch:
                    deleted += int(await self._redis.unlink(*pending))
                    pending = []
            if pending:
                deleted += int(await self._redis.unlink(*pending))
        except (RedisError, OSError) as exc:
            raise CacheError(f"cache clear failed: {type(exc).__name__}: {exc}") from exc
        return deleted
