"""The agent's behaviour, independent of HTTP: answer a question, check health, admin.

:class:`AgentService` holds the clients (Redis, vector store, LLM) and the metrics, and
implements the ``/chat`` flow:

1. rate limit (token bucket in Redis; fails open if Redis is down),
2. answer cache lookup (before anything that costs money),
3. on a miss: embed the question, search Milvus, ask the chat model, cache the answer.

Failures are raised as :class:`ChatFailure` carrying the HTTP status and the error kind
that ``requests_error_total`` counts; :mod:`agentverify.reference_agent.app` turns them
into JSON responses.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from agentverify.reference_agent.cache import AnswerCache, CacheError, answer_key
from agentverify.reference_agent.llm import LLMClient, LLMEndpoint, LLMError
from agentverify.reference_agent.metrics import AgentMetrics
from agentverify.reference_agent.ratelimit import (
    RateLimiter,
    RateLimitError,
    rate_limit_setting,
)
from agentverify.reference_agent.settings import AgentSettings
from agentverify.reference_agent.shared import SharedSetting
from agentverify.reference_agent.vectors import Passage, VectorStore, VectorStoreError
from agentverify.seed import RateLimitSection

__all__ = [
    "LLM_SETTING_KEY",
    "AgentService",
    "ChatFailure",
    "ChatRequest",
    "LLMSwitch",
    "RateLimitUpdate",
    "build_messages",
]

log = logging.getLogger("agentverify.reference_agent")

LLM_SETTING_KEY = "agent:llm:active"
HEALTH_TIMEOUT_S = 2.0
SYSTEM_PROMPT = (
    "You are the support assistant of this service. Answer the user's question using "
    "the knowledge passages below; cite passage titles, and say so when the passages "
    "do not cover the question."
)


class ChatRequest(BaseModel):
    """Body of ``POST /chat``."""

    message: str = Field(min_length=1, max_length=4000)
    session_id: str | None = Field(default=None, max_length=200)


class RateLimitUpdate(BaseModel):
    """Body of ``POST /admin/rate-limit``; omitted fields keep their current value."""

    enabled: bool | None = None
    requests_per_second: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)


class LLMSwitch(BaseModel):
    """Body of ``POST /admin/llm``."""

    use: Literal["primary", "backup"]


@dataclass(eq=False)
class ChatFailure(Exception):
    """A /chat request that ends in an error response.

    Attributes:
        status: HTTP status.
        error: The error kind (``requests_error_total`` label and ``error`` in the body).
        detail: A human-readable line (never a secret or a traceback).
        headers: Extra response headers (``Retry-After``).
    """

    status: int
    error: str
    detail: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        """``"502 llm_error: detail"``."""
        return f"{self.status} {self.error}: {self.detail}".rstrip(": ")

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        out: dict[str, Any] = {"error": self.error}
        if self.detail:
            out["detail"] = self.detail
        return out


def build_messages(question: str, passages: list[Passage]) -> list[dict[str, str]]:
    """The chat messages: a system prompt holding the passages (titles first), the question.

    Example:
        >>> msgs = build_messages("q?", [Passage(1, "Redis", "redis.md", "Redis is fast.", 0.9)])
        >>> msgs[0]["content"].splitlines()[2]
        '[1] Redis (redis.md)'
    """
    lines = [SYSTEM_PROMPT, ""]
    if passages:
        for n, passage in enumerate(passages, start=1):
            lines.append(f"[{n}] {passage.title} ({passage.source})")
            lines.append(passage.text.strip())
            lines.append("")
    else:
        lines.append("(no knowledge passages were found)")
    return [
        {"role": "system", "content": "\n".join(lines).rstrip()},
        {"role": "user", "content": question},
    ]


class AgentService:
    """Everything behind the HTTP routes of one replica.

    Args:
        settings: The resolved settings.
        metrics: The app's metrics.
        redis: An async Redis client (``decode_responses=True``).
        vector_store: The knowledge base.
        llm: The LLM API client.
    """

    def __init__(
        self,
        settings: AgentSettings,
        metrics: AgentMetrics,
        *,
        redis: Any,
        vector_store: VectorStore,
        llm: LLMClient,
    ) -> None:
        """Wire the clients; nothing connects until the first request."""
        self.settings = settings
        self.metrics = metrics
        self.redis = redis
        self.vector_store = vector_store
        self.llm = llm
        self.cache = AnswerCache(redis, None if settings.cache_without_ttl else settings.cache.ttl)
        self.limiter = RateLimiter(redis)
        self.rate_limit = rate_limit_setting(redis, settings.rate_limit)
        self.active_llm: SharedSetting[str] = SharedSetting(
            redis, LLM_SETTING_KEY, default="primary", parse=_parse_use, dump=str
        )

    # ------------------------------------------------------------------ LLM selection

    def endpoint(self, use: str) -> LLMEndpoint:
        """The primary or backup API as an :class:`LLMEndpoint`."""
        model = self.settings.model
        if use == "backup":
            return LLMEndpoint(
                name="backup",
                model_name=model.backup.model_name,
                base_url=self.settings.backup_base_url,
                api_key=model.backup.api_key,
            )
        return LLMEndpoint("primary", model.model_name, self.settings.base_url, model.api_key)

    async def llm_state(self) -> dict[str, str]:
        """Which API is in use, its model and base URL (never its key)."""
        use = await self.active_llm.get()
        endpoint = self.endpoint(use)
        return {"use": use, "model": endpoint.model_name, "base_url": endpoint.base_url}

    # ------------------------------------------------------------------ chat

    async def chat(self, request: ChatRequest, client_id: str) -> dict[str, Any]:
        """Answer one question (see the module docstring for the flow).

        Returns:
            The response body without ``version``/``replica`` (the route adds them).

        Raises:
            ChatFailure: Rate limited, or a dependency failed beyond recovery.
        """
        redis_failed = False

        limits = await self.rate_limit.get()
        if limits.enabled:
            try:
                decision = await self.limiter.check(client_id, limits)
            except RateLimitError as exc:
                # Fail open: an outage of Redis must not turn into an outage of the agent.
                log.warning("%s; letting the request through", exc)
                redis_failed = True
            else:
                if not decision.allowed:
                    raise ChatFailure(
                        429, "rate_limited",
                        headers={"Retry-After": decision.retry_after_header},
                    )

        endpoint = self.endpoint(await self.active_llm.get())
        key = answer_key(endpoint.model_name, request.message)
        try:
            cached = await self.cache.get(key)
        except CacheError as exc:
            if self.settings.cache_required:  # the defect knob: no answer without Redis
                raise ChatFailure(503, "cache_error", str(exc)) from exc
            log.warning("%s; answering without the cache", exc)
            redis_failed = True
            cached = None
        if cached is not None and "answer" in cached:
            self.metrics.cache.labels(result="hit").inc()
            if redis_failed:
                self.metrics.error("cache_error")
            return {**cached, "cached": True}
        self.metrics.cache.labels(result="miss").inc()

        embedding_model = self.settings.cost.embedding_model
        try:
            embedded = await self.llm.embed(
                endpoint, [request.message], model=embedding_model,
                dimensions=self.settings.vector_store.dim,
            )
        except LLMError as exc:
            log.warning("embedding failed: %s", exc)
            raise ChatFailure(502, exc.kind, str(exc)) from exc
        self.metrics.embedding_usage(embedding_model, embedded.tokens)

        try:
            passages = await self.vector_store.search(
                embedded.vectors[0], self.settings.vector_store.top_k
            )
        except VectorStoreError as exc:
            log.warning("%s", exc)
            raise ChatFailure(503, "vector_store_error", str(exc)) from exc

        model = self.settings.model
        try:
            result = await self.llm.chat(
                endpoint, build_messages(request.message, passages),
                temperature=model.temperature,
                max_tokens=None if self.settings.drop_max_tokens else model.max_tokens,
            )
        except LLMError as exc:
            log.warning("chat completion failed: %s", exc)
            raise ChatFailure(502, exc.kind, str(exc)) from exc
        self.metrics.chat_usage(endpoint.model_name, result.usage)

        answer = {
            "answer": result.text,
            "sources": [
                {"id": p.id, "title": p.title, "source": p.source, "score": round(p.score, 6)}
                for p in passages
            ],
            "model": endpoint.model_name,
            "usage": result.usage.as_dict(),
        }
        try:
            await self.cache.put(key, answer)
        except CacheError as exc:
            log.warning("%s; answer not cached", exc)
            redis_failed = True
        if redis_failed:
            self.metrics.error("cache_error")
        log.debug("answered with %s: %d passages, %d tokens", endpoint.model_name,
                  len(passages), result.usage.total_tokens)
        return {**answer, "cached": False}

    # ------------------------------------------------------------------ health

    async def _check_redis(self) -> str:
        try:
            await asyncio.wait_for(self.redis.ping(), HEALTH_TIMEOUT_S)
        except TimeoutError:
            return f"redis: no PONG within {HEALTH_TIMEOUT_S:g}s"
        except Exception as exc:  # noqa: BLE001 - any failure is the check's answer
            return f"redis: {type(exc).__name__}: {exc}"
        return "ok"

    async def _check_milvus(self) -> str:
        try:
            await asyncio.wait_for(self.vector_store.check(HEALTH_TIMEOUT_S), HEALTH_TIMEOUT_S)
        except TimeoutError:
            return f"milvus: no answer within {HEALTH_TIMEOUT_S:g}s"
        except Exception as exc:  # noqa: BLE001 - any failure is the check's answer
            return f"milvus: {exc}"
        return "ok"

    async def health(self) -> tuple[bool, dict[str, str]]:
        """Check Redis and Milvus in parallel, each within ~2 s.

        Returns:
            (all ok, ``{"redis": "ok" | message, "milvus": "ok" | message}``).
        """
        redis_state, milvus_state = await asyncio.gather(
            self._check_redis(), self._check_milvus()
        )
        checks = {"redis": redis_state, "milvus": milvus_state}
        for ignored in self.settings.health_ignores:  # the defect knob: a blind check
            checks[ignored] = "ok"
        return all(v == "ok" for v in checks.values()), checks

    # ------------------------------------------------------------------ admin

    async def update_rate_limit(self, update: RateLimitUpdate) -> RateLimitSection:
        """Merge ``update`` into the effective settings and store them for every replica.

        Raises:
            agentverify.reference_agent.shared.SharedSettingError: Redis refused.
        """
        current = await self.rate_limit.get()
        merged = RateLimitSection.model_validate(
            {**current.model_dump(), **update.model_dump(exclude_none=True)}
        )
        await self.rate_limit.set(merged)
        log.warning("rate limit set for all replicas: %s", merged.model_dump())
        return merged

    async def switch_llm(self, use: str) -> dict[str, str]:
        """Make every replica use the primary or the backup API."""
        await self.active_llm.set(use)
        log.warning("LLM API switched to %s for all replicas", use)
        return await self.llm_state()


def _parse_use(raw: str) -> str:
    if raw not in ("primary", "backup"):
        raise ValueError(f"expected primary or backup, got {raw!r}")
    return raw

