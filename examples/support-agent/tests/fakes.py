"""In-memory stand-ins for the agent's clients, for unit tests only (no servers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from support_agent.cache import CacheError
from support_agent.knowledge import KnowledgeError, Passage
from support_agent.llm import Answer, LLMError
from support_agent.ratelimit import Decision, RateLimitUnavailable


class FakeLLM:
    """Embeds every text as a unit vector and answers with a fixed text."""

    def __init__(self, dim: int = 4, fail: bool = False) -> None:
        self.dim = dim
        self.fail = fail
        self.embed_calls = 0
        self.answer_calls = 0

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.embed_calls += 1
        if self.fail:
            raise LLMError("embeddings at http://llm answered 503 after 3 retries: down")
        return [[1.0] + [0.0] * (self.dim - 1) for _ in texts]

    async def answer(self, question: str, passages: Sequence[Passage]) -> Answer:
        self.answer_calls += 1
        return Answer(text=f"answer to {question}", model="fake-model", prompt_tokens=10, completion_tokens=4)

    async def close(self) -> None:
        pass


class FakeKnowledge:
    """Returns fixed passages; ``down`` makes every call fail like an unreachable Milvus."""

    def __init__(self, passages: Sequence[Passage] = (), down: bool = False) -> None:
        self.passages = list(passages)
        self.down = down

    async def search(self, vector: Sequence[float], top_k: int) -> list[Passage]:
        if self.down:
            raise KnowledgeError("Milvus at http://milvus: search failed: unavailable")
        return self.passages[:top_k]

    async def check(self) -> None:
        if self.down:
            raise KnowledgeError("Milvus at http://milvus: no collection 'support_kb' (run the ingest)")

    async def close(self) -> None:
        pass


class FakeCache:
    """A dict; ``down`` makes get and put raise like an unreachable Redis."""

    def __init__(self, down: bool = False) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self.down = down

    async def get(self, key: str) -> dict[str, Any] | None:
        if self.down:
            raise CacheError("Redis GET failed: ConnectionError: refused")
        return self.data.get(key)

    async def put(self, key: str, value: dict[str, Any]) -> None:
        if self.down:
            raise CacheError("Redis SETEX failed: ConnectionError: refused")
        self.data[key] = value


class FakeRedis:
    """Answers PING, or raises when ``down``."""

    def __init__(self, down: bool = False) -> None:
        self.down = down

    async def ping(self) -> bool:
        if self.down:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return True

    async def aclose(self) -> None:
        pass


class FakeLimiter:
    """Allows ``allow`` requests per client, then refuses; ``down`` raises like a lost Redis."""

    def __init__(self, allow: int = 1, down: bool = False) -> None:
        self.allow = allow
        self.down = down
        self.seen: dict[str, int] = {}

    async def take(self, client_id: str) -> Decision:
        if self.down:
            raise RateLimitUnavailable("ConnectionError: refused")
        self.seen[client_id] = self.seen.get(client_id, 0) + 1
        if self.seen[client_id] > self.allow:
            return Decision(allowed=False, retry_after_ms=1500)
        return Decision(allowed=True)
