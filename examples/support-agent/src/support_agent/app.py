"""The HTTP API: ``POST /v1/ask``, ``GET /healthz`` and ``GET /metrics``.

``POST /v1/ask`` with ``{"question": str, "conversation_id": str | null}`` answers::

    {"text": "...", "citations": [{"doc": "Warranty and returns", "score": 0.83}],
     "meta": {"build": "v1", "cached": false, "model": "gpt-4o-mini"}}

A question is looked up in the Redis cache first; on a miss it is embedded, the nearest
passages are searched in Milvus, the chat model answers from them and the answer is
cached. Errors answer ``{"error": "<one line>"}`` with 400 (bad body), 429 (rate limit,
with ``Retry-After``), 500 (fault flag or bug), 502 (LLM API) or 503 (knowledge base).

Every response carries ``X-App-Version`` (the build), ``X-Served-By`` (the replica) and
``X-Request-Id`` (also in the request's log line; a valid incoming one is kept).

Example:
    >>> from support_agent.config import load_settings
    >>> app = create_app(load_settings({"OPENAI_API_KEY": "sk-x"}))
    >>> sorted(r.path for r in app.routes if r.path in ("/v1/ask", "/healthz", "/metrics"))
    ['/healthz', '/metrics', '/v1/ask']
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from support_agent.accesslog import AccessLog
from support_agent.cache import AnswerCache, CacheError, answer_key, make_redis
from support_agent.config import Settings
from support_agent.knowledge import KnowledgeBase, KnowledgeError
from support_agent.llm import LLM, LLMError
from support_agent.metrics import CONTENT_TYPE, Metrics
from support_agent.ratelimit import RateLimiter, RateLimitUnavailable

__all__ = ["AskBody", "Components", "build_components", "create_app"]

log = logging.getLogger("support_agent")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class AskBody(BaseModel):
    """The body of ``POST /v1/ask``; other keys are ignored.

    Example:
        >>> AskBody.model_validate_json('{"question": "Warranty?", "extra": 1}').conversation_id is None
        True
    """

    model_config = ConfigDict(extra="ignore")

    question: str = Field(min_length=1, max_length=4000)
    conversation_id: str | None = Field(None, max_length=200)


@dataclass
class Components:
    """What the API talks to; :func:`build_components` makes the real ones, tests pass fakes.

    ``redis`` needs ``ping()`` and ``aclose()``; ``limiter`` is None when rate limiting is off.

    Example:
        >>> from support_agent.config import load_settings
        >>> build_components(load_settings({"OPENAI_API_KEY": "sk-x"})).limiter is None
        True
    """

    llm: Any
    knowledge: Any
    cache: Any
    redis: Any
    metrics: Metrics
    access_log: AccessLog
    limiter: Any = None
    warm_up: Callable[[], Awaitable[None]] | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def build_components(settings: Settings) -> Components:
    """The real clients for ``settings`` (none of them connects yet).

    Example:
        >>> from support_agent.config import load_settings
        >>> parts = build_components(load_settings({"OPENAI_API_KEY": "sk-x"}))
        >>> parts.cache.ttl, parts.knowledge.collection
        (3600, 'support_kb')
    """
    metrics = Metrics()
    metrics.expect_models(settings.model.model_name, settings.vector_store.embedding_model)
    redis = make_redis(settings.redis_url, settings.cache.timeout)
    llm = LLM(settings, metrics)
    knowledge = KnowledgeBase(settings.milvus_uri, settings.vector_store.collection, settings.vector_store.timeout)
    limiter = None
    if settings.rate_limit.enabled:
        limiter = RateLimiter(redis, settings.rate_limit.requests_per_second, settings.rate_limit.burst)

    async def warm_up() -> None:
        # Importing pymilvus (grpc, protobuf) takes about a second: do it before the
        # first health check instead of inside it.
        await asyncio.to_thread(importlib.import_module, "pymilvus")

    return Components(
        llm=llm, knowledge=knowledge, cache=AnswerCache(redis, settings.cache.ttl), redis=redis,
        metrics=metrics, access_log=AccessLog(settings.log_file), limiter=limiter, warm_up=warm_up,
        closers=[llm.close, knowledge.close, redis.aclose],
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _client_id(request: Request) -> str:
    customer = request.headers.get("x-customer-id", "").strip()
    if customer:
        return "customer:" + customer[:200]
    forwarded = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
    if forwarded:
        return "ip:" + forwarded
    return "ip:" + (request.client.host if request.client else "unknown")


def _body_problem(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']} (expected {{\"question\": str, \"conversation_id\": str | null}})"


def create_app(settings: Settings, components: Components | None = None) -> FastAPI:
    """The FastAPI application of one replica.

    Args:
        settings: Resolved settings (read once, at start-up).
        components: The clients to use; default :func:`build_components`.

    Example:
        >>> from support_agent.config import load_settings
        >>> create_app(load_settings({"OPENAI_API_KEY": "sk-x"})).title
        'Orbit support agent'
    """
    parts = components or build_components(settings)
    metrics = parts.metrics
    ask_count = 0  # for SUPPORT_AGENT_FAULT=errors; one event loop, so no lock is needed

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if parts.warm_up is not None:
            await parts.warm_up()
        log.warning("support agent %s (%s) ready: model %s, collection %s, rate limit %s",
                    settings.version, settings.instance, settings.model.model_name,
                    settings.vector_store.collection,
                    "on" if parts.limiter is not None else "off")
        try:
            yield
        finally:
            for close in parts.closers:
                try:
                    await close()
                except Exception as exc:  # noqa: BLE001 - shutting down; one failed close must not stop the rest
                    log.warning("closing a client failed: %s", exc)
            parts.access_log.close()
            log.warning("support agent %s (%s) stopped", settings.version, settings.instance)

    app = FastAPI(title="Orbit support agent", version=settings.version, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def record(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        incoming = request.headers.get("x-request-id", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.state.log = {}
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
        finally:
            metrics.request(request.url.path)
            parts.access_log.write({
                "request_id": request_id, "method": request.method, "path": request.url.path,
                "status": status, "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                **request.state.log, "instance": settings.instance,
            })
        response.headers["X-App-Version"] = settings.version
        response.headers["X-Served-By"] = settings.instance
        response.headers["X-Request-Id"] = request_id
        return response

    async def answer(request: Request) -> JSONResponse:
        nonlocal ask_count
        if parts.limiter is not None:
            client = _client_id(request)
            request.state.log["client"] = client
            try:
                decision = await parts.limiter.take(client)
            except RateLimitUnavailable as exc:
                log.warning("rate limiter unavailable, letting the request through: %s", exc)
            else:
                if not decision.allowed:
                    metrics.failure("rate_limited")
                    return _error(429, f"rate limit of {settings.rate_limit.requests_per_second:g} requests/s "
                                       "exceeded", {"Retry-After": decision.retry_after})
        try:
            body = AskBody.model_validate_json(await request.body())
        except ValidationError as exc:
            metrics.failure("bad_request")
            return _error(400, _body_problem(exc))
        question = body.question.strip()
        if not question:
            metrics.failure("bad_request")
            return _error(400, "question: must not be blank")
        request.state.log["conversation_id"] = body.conversation_id

        ask_count += 1
        if settings.fault == "errors" and ask_count % 2 == 0:
            metrics.failure("fault_injected")
            return _error(500, "SUPPORT_AGENT_FAULT=errors: this request fails on purpose")

        key = answer_key(settings.model.model_name, settings.vector_store.collection, question)
        try:
            hit = await parts.cache.get(key)
        except CacheError as exc:
            log.warning("cache unavailable, answering without it: %s", exc)
            hit = None
        if hit is not None and isinstance(hit.get("text"), str):
            request.state.log["cached"] = True
            return JSONResponse({"text": hit["text"], "citations": hit.get("citations", []),
                                 "meta": {"build": settings.version, "cached": True,
                                          "model": hit.get("model", settings.model.model_name)}})

        try:
            [vector] = await parts.llm.embed([question])
            passages = await parts.knowledge.search(vector, settings.vector_store.top_k)
            reply = await parts.llm.answer(question, passages)
        except LLMError as exc:
            metrics.failure("llm_error")
            return _error(502, str(exc))
        except KnowledgeError as exc:
            metrics.failure("knowledge_error")
            return _error(503, str(exc))

        citations: list[dict[str, Any]] = []
        for passage in passages:  # best first; a document is cited once, at its best score
            if all(c["doc"] != passage.doc for c in citations):
                citations.append({"doc": passage.doc, "score": round(passage.score, 4)})
        value = {"text": reply.text, "citations": citations, "model": reply.model}
        try:
            await parts.cache.put(key, value)
        except CacheError as exc:
            log.warning("cache unavailable, answer not cached: %s", exc)
        request.state.log["cached"] = False
        return JSONResponse({"text": reply.text, "citations": citations,
                             "meta": {"build": settings.version, "cached": False, "model": reply.model}})

    @app.post("/v1/ask")
    async def ask(request: Request) -> JSONResponse:
        """Answer one customer question from the knowledge base."""
        started = time.perf_counter()
        try:
            return await answer(request)
        except Exception:
            metrics.failure("internal")
            log.exception("POST /v1/ask failed")
            return _error(500, "internal error")
        finally:
            metrics.duration.observe(time.perf_counter() - started)

    async def redis_state() -> str:
        try:
            await asyncio.wait_for(parts.redis.ping(), timeout=settings.cache.timeout + 0.5)
        except Exception as exc:  # noqa: BLE001 - any failure means "down"; the reason is reported
            return f"down: {type(exc).__name__}: {str(exc)[:160]}"
        return "ok"

    async def milvus_state() -> str:
        try:
            await parts.knowledge.check()
        except KnowledgeError as exc:
            return f"down: {exc}"
        except Exception as exc:  # noqa: BLE001 - a timeout or anything else means "down"
            return f"down: {type(exc).__name__}: {str(exc)[:160]}"
        return "ok"

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 when Redis answers PING and the Milvus collection is loaded, else 503."""
        if settings.fault == "unhealthy":
            return JSONResponse({"ok": False, "deps": {"feature_flag": "SUPPORT_AGENT_FAULT=unhealthy"},
                                 "failing": ["feature_flag"]}, status_code=503)
        redis_text, milvus_text = await asyncio.gather(redis_state(), milvus_state())
        deps = {"redis": redis_text, "milvus": milvus_text}
        failing = [name for name, text in deps.items() if text != "ok"]
        if failing:
            return JSONResponse({"ok": False, "deps": deps, "failing": failing}, status_code=503)
        return JSONResponse({"ok": True, "deps": deps})

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text exposition of the agent's registry."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.state.components = parts
    return app
