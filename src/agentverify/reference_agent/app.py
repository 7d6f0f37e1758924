"""The agent's HTTP application: :func:`create_app` and its routes.

Routes (JSON in and out; every response carries ``X-Agent-Version``,
``X-Agent-Replica`` and ``X-Request-Id``, and is one line of the request log
``AGENT_LOG_FILE`` when it is set: :mod:`~agentverify.reference_agent.requestlog`; SIGHUP
reopens the file):

==========================  ===========================================================
``POST /chat``              ``{"message", "session_id"?}`` -> answer, sources, usage
``GET /health``             200 only if Redis PINGs and Milvus holds the collection
``GET /version``            version, replica, model, environment
``GET /metrics``            Prometheus text of this app's own registry
``GET|POST /admin/rate-limit``   fleet-wide token-bucket settings (stored in Redis)
``GET|POST /admin/llm``          fleet-wide primary/backup LLM switch (stored in Redis)
``POST /admin/cache/clear`` delete every cached answer (``agent:answer:*``)
==========================  ===========================================================

Clients are injectable so unit tests run without servers; whatever :func:`create_app`
does not receive, the app creates at start-up (and closes at shutdown). Nothing
connects before the first request that needs it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentverify.reference_agent.cache import CacheError
from agentverify.reference_agent.faults import ErrorInjector
from agentverify.reference_agent.llm import LLMClient, RetryPolicy
from agentverify.reference_agent.metrics import AgentMetrics
from agentverify.reference_agent.requestlog import RequestLog, RequestLogMiddleware
from agentverify.reference_agent.service import (
    AgentService,
    ChatFailure,
    ChatRequest,
    LLMSwitch,
    RateLimitUpdate,
)
from agentverify.reference_agent.settings import AgentSettings, load_settings
from agentverify.reference_agent.shared import SharedSettingError
from agentverify.reference_agent.vectors import MilvusVectorStore, VectorStore

__all__ = ["create_app", "make_redis"]

log = logging.getLogger("agentverify.reference_agent")

Sleep = Callable[[float], Awaitable[Any]]


def make_redis(url: str) -> Any:
    """An async Redis client with short timeouts and a single immediate retry.

    redis-py's default retries with exponential backoff would stretch one request to
    seconds while Redis is down; one retry is enough to replace a stale pooled
    connection after a Redis restart.
    """
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 1),
    )


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("agentverify.reference_agent")
    logger.setLevel(level)
    # Under uvicorn the root logger has no handler: give ours one, once. Under pytest
    # the root has capture handlers and records propagate to them.
    if not logging.getLogger().handlers and not getattr(logger, "_agent_handler", False):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
        logger._agent_handler = True  # type: ignore[attr-defined]


class _IdentityHeaders:
    """Pure ASGI middleware adding ``X-Agent-Version`` / ``X-Agent-Replica``."""

    def __init__(self, app: ASGIApp, version: str, replica: str) -> None:
        self.app = app
        self.extra = [
            (b"x-agent-version", version.encode("latin-1", "replace")),
            (b"x-agent-replica", replica.encode("latin-1", "replace")),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _reopen_on_sighup(request_log: RequestLog, stack: AsyncExitStack) -> None:
    """SIGHUP reopens the request log (logrotate's ``postrotate``) instead of ending the
    process (its default). Only the main thread's loop can take a signal handler (under
    uvicorn it is; an app driven from another thread, as in unit tests, goes without)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, request_log.reopen)
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        log.warning("SIGHUP will not reopen the request log here: %s", exc)
        return
    stack.callback(loop.remove_signal_handler, signal.SIGHUP)


def create_app(
    settings: AgentSettings | None = None,
    *,
    redis: Any | None = None,
    vector_store: VectorStore | None = None,
    http_client: httpx.AsyncClient | None = None,
    registry: CollectorRegistry | None = None,
    sleep: Sleep = asyncio.sleep,
) -> FastAPI:
    """Build the agent app.

    Args:
        settings: Resolved settings; ``None`` means :func:`load_settings` (the
            ``AGENT_CONFIG`` file and the environment).
        redis: An async Redis client; default: one for ``cache.url``, made at start-up.
        vector_store: The knowledge base; default: Milvus from ``vector_store``.
        http_client: The client for the LLM API (e.g. with an ``httpx.MockTransport``).
        registry: Prometheus registry; default: a new one for this app.
        sleep: Awaitable sleep for retry backoff and ``AGENT_LATENCY_MS``.

    Returns:
        The FastAPI app. Its lifespan creates the missing clients; the service is then
        at ``app.state.service`` and the metrics at ``app.state.metrics``.

    Example:
        >>> app = create_app(AgentSettings(version="v2"))
        >>> app.state.settings.version
        'v2'
    """
    settings = settings if settings is not None else load_settings()
    _configure_logging(settings.log_level)
    metrics = AgentMetrics(settings, registry)
    injector = ErrorInjector(settings.error_rate)
    identity = {"version": settings.version, "replica": settings.replica}
    request_log = RequestLog(settings.log_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.callback(request_log.close)
            if settings.log_file:
                _reopen_on_sighup(request_log, stack)
            redis_client = redis
            if redis_client is None:
                redis_client = make_redis(settings.cache.url)
                stack.push_async_callback(redis_client.aclose)
            store = vector_store
            if store is None:
                milvus = MilvusVectorStore(settings.vector_store)
                stack.push_async_callback(milvus.close)
                await milvus.warm_up()
                store = milvus
            http = http_client
            if http is None:
                http = httpx.AsyncClient(
                    limits=httpx.Limits(max_connections=200, max_keepalive_connections=50)
                )
                stack.push_async_callback(http.aclose)
            llm = LLMClient(
                http,
                RetryPolicy(retries=settings.model.retry_count),
                timeout=settings.model.timeout,
                on_attempt=metrics.llm_attempt,
                sleep=sleep,
            )
            app.state.service = AgentService(
                settings, metrics, redis=redis_client, vector_store=store, llm=llm
            )
            log.info(
                "agent %s replica %s (%s) ready: model %s, collection %s",
                settings.version, settings.replica, settings.environment,
                settings.model.model_name, settings.vector_store.collection,
            )
            yield

    app = FastAPI(
        title="agentverify reference agent",
        version=settings.version,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.request_log = request_log
    app.add_middleware(_IdentityHeaders, version=settings.version, replica=settings.replica)
    # outermost: a request is logged with the status the client gets, whatever failed
    app.add_middleware(RequestLogMiddleware, log=request_log, identity=identity)

    def service_of(request: Request) -> AgentService:
        return request.app.state.service  # type: ignore[no-any-return]

    @app.post(
        "/chat",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ChatRequest.model_json_schema()}},
            }
        },
    )
    async def chat(request: Request) -> JSONResponse:
        """Answer a question from the knowledge base (cached, rate limited)."""
        started = time.perf_counter()
        metrics.requests.labels(type="chat").inc()
        try:
            if settings.latency_ms > 0:
                await sleep(settings.latency_ms / 1000)
            if injector.next():
                raise ChatFailure(500, "injected", "AGENT_ERROR_RATE")
            try:
                body = ChatRequest.model_validate_json(await request.body())
            except ValidationError as exc:
                first = exc.errors(include_url=False, include_input=False)[0]
                where = ".".join(str(p) for p in first["loc"]) or "body"
                raise ChatFailure(422, "invalid_request", f"{where}: {first['msg']}") from None
            client_id = request.headers.get("x-client-id") or (
                request.client.host if request.client else "unknown"
            )
            result = await service_of(request).chat(body, client_id)
            return JSONResponse({**result, **identity})
        except ChatFailure as failure:
            metrics.error(failure.error)
            return JSONResponse(failure.body(), failure.status, headers=failure.headers)
        except Exception:
            log.exception("unexpected error in /chat")
            metrics.error("internal")
            return JSONResponse({"error": "internal"}, 500)
        finally:
            metrics.latency.labels(type="chat").observe(time.perf_counter() - started)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """200 when Redis and Milvus (with the knowledge collection) answer, else 503."""
        if settings.fail_health:
            return JSONResponse(
                {"status": "failing", "reason": "AGENT_FAIL_HEALTH", **identity}, 503
            )
        ok, checks = await service_of(request).health()
        status = "ok" if ok else "unhealthy"
        return JSONResponse({"status": status, **identity, "checks": checks}, 200 if ok else 503)

    @app.get("/version")
    async def version() -> dict[str, str]:
        """Version, replica, configured model and environment."""
        return {**identity, "model": settings.model.model_name,
                "environment": settings.environment}

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        """Prometheus text exposition of this app's registry."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/admin/rate-limit")
    async def get_rate_limit(request: Request) -> dict[str, Any]:
        """The effective fleet-wide rate-limit settings."""
        return (await service_of(request).rate_limit.get()).model_dump()

    @app.post("/admin/rate-limit")
    async def set_rate_limit(update: RateLimitUpdate, request: Request) -> Any:
        """Change the rate limit for every replica (omitted fields are kept)."""
        try:
            return (await service_of(request).update_rate_limit(update)).model_dump()
        except SharedSettingError as exc:
            return JSONResponse({"error": "cache_error", "detail": str(exc)}, 503)

    @app.get("/admin/llm")
    async def get_llm(request: Request) -> dict[str, str]:
        """Which LLM API (primary or backup) the fleet uses."""
        return await service_of(request).llm_state()

    @app.post("/admin/llm")
    async def set_llm(switch: LLMSwitch, request: Request) -> Any:
        """Switch every replica to the primary or the backup LLM API."""
        try:
            return await service_of(request).switch_llm(switch.use)
        except SharedSettingError as exc:
            return JSONResponse({"error": "cache_error", "detail": str(exc)}, 503)

    @app.post("/admin/cache/clear")
    async def clear_cache(request: Request) -> Any:
        """Delete every cached answer; returns how many keys were deleted."""
        try:
            deleted = await service_of(request).cache.clear()
        except CacheError as exc:
            return JSONResponse({"error": "cache_error", "detail": str(exc)}, 503)
        log.warning("answer cache cleared: %d keys", deleted)
        return {"deleted": deleted}

    return app
