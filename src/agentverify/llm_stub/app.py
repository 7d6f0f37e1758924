"""The LLM stub's FastAPI application: OpenAI-compatible endpoints plus control knobs.

Serve it with one worker (the ledger lives in memory)::

    LLM_STUB_API_KEYS=sk-test python -m uvicorn agentverify.llm_stub.app:app \\
        --host 127.0.0.1 --port 8900

Handlers do no logging and no per-request work beyond tokenizing, hashing and a JSON
dump; answers and embeddings of repeated prompts come from an LRU cache. Every error
under ``/v1`` (400, 401, 404, injected faults) has OpenAI's body
``{"error": {"message", "type", "param", "code"}}``, which the ``openai`` SDK turns into
``BadRequestError``, ``AuthenticationError``, ``RateLimitError``, ``InternalServerError``...

Example:
    >>> stub = create_app(api_keys=["sk-test"])   # or read LLM_STUB_API_KEYS
    >>> sorted(r.path for r in stub.routes if r.path.startswith("/v1"))
    ['/v1/chat/completions', '/v1/embeddings', '/v1/models']
    >>> sorted(r.path for r in stub.routes if r.path.startswith(("/ledger", "/faults")))
    ['/faults', '/faults', '/faults', '/ledger', '/ledger/calls', '/ledger/reset']
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
import struct
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentverify.llm_stub.answer import generate_answer
from agentverify.llm_stub.faults import (
    FaultDecision,
    FaultInjector,
    FaultSettings,
    describe_validation_error,
    injected_error,
)
from agentverify.llm_stub.state import CALL_LOG_SIZE, Ledger, StubMetrics
from agentverify.llm_stub.stream import chat_events
from agentverify.llm_stub.tokens import MESSAGE_OVERHEAD, REPLY_PRIMING, count_tokens, embed

__all__ = ["create_app", "app", "API_KEYS_ENV", "DEFAULT_DIMENSIONS"]

#: Environment variable with the comma-separated accepted API keys (empty: no auth).
API_KEYS_ENV = "LLM_STUB_API_KEYS"
#: Embedding size when a request names no ``dimensions``.
DEFAULT_DIMENSIONS = 64
MIN_DIMENSIONS = 2
MAX_DIMENSIONS = 4096

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_UNKNOWN_MODEL = "unknown"
_MAX_LABEL = 128  # model names go into Prometheus labels; cap what a client can send
_CLIENT_CLOSED = 499  # nginx's status for "the client went away before the answer"
_STREAM_BATCH = 64  # deltas per write after the first: one event each, fewer sends
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}  # no proxy buffering


class _BadRequest(Exception):
    """A request the stub refuses with 400, as OpenAI would."""

    def __init__(self, message: str, param: str | None = None, model: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.model = model


class _Chat(NamedTuple):
    """A valid chat request."""

    model: str
    messages: list[tuple[str, str]]
    limit: int | None
    limit_param: str | None
    stream: bool
    include_usage: bool


def _error(status: int, message: str, type_: str, code: str | None, param: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status,
                        headers={**(headers or {}), "x-request-id": "req_" + uuid.uuid4().hex[:24]})


def _retry_count(request: Request) -> int | None:
    """The ``openai`` SDK's attempt number (``x-stainless-retry-count``), if sent."""
    raw = request.headers.get("x-stainless-retry-count")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


async def _client_gone(request: Request) -> None:
    """Return once the client has disconnected (the body has been read already)."""
    # After the body, the server's receive() blocks until it has http.disconnect to give.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _keys_from_env() -> list[str]:
    raw = os.environ.get(API_KEYS_ENV, "")
    return [key.strip() for key in raw.split(",") if key.strip()]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body())
    except ValueError as exc:
        raise _BadRequest("The request body is not valid JSON.") from exc
    if not isinstance(data, dict):
        raise _BadRequest("The request body must be a JSON object.")
    return data


def _model_of(data: dict[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _BadRequest("you must provide a model parameter", "model")
    return model[:_MAX_LABEL]


def _content_text(content: object, index: int, model: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Content parts: keep the text parts, ignore images and the like.
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif not isinstance(part, dict):
                break
        else:
            return "\n".join(texts)
    raise _BadRequest(
        f"messages[{index}].content must be a string or a list of content parts",
        f"messages[{index}].content",
        model,
    )


def _parse_chat(data: dict[str, Any]) -> _Chat:
    """Return the valid request or raise :class:`_BadRequest`."""
    model = _model_of(data)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("messages must be a non-empty array", "messages", model)
    pairs: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _BadRequest(f"messages[{i}] must be an object", f"messages[{i}]", model)
        role = message.get("role")
        if role not in _ROLES:
            raise _BadRequest(
                f"messages[{i}].role must be one of {', '.join(sorted(_ROLES))}",
                f"messages[{i}].role",
                model,
            )
        pairs.append((role, _content_text(message.get("content"), i, model)))
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _BadRequest("stream must be a boolean", "stream", model)
    options = data.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            # OpenAI's own wording for this mistake.
            raise _BadRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                              "stream_options", model)
        usage_flag = options.get("include_usage") if isinstance(options, dict) else None
        if not isinstance(options, dict) or not isinstance(usage_flag, bool | None):
            raise _BadRequest("stream_options must be an object with a boolean include_usage",
                              "stream_options", model)
        include_usage = bool(usage_flag)
    temperature = data.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2
    ):
        raise _BadRequest("temperature must be a number between 0 and 2", "temperature", model)
    limit: int | None = None
    limit_param: str | None = None
    # max_completion_tokens supersedes the deprecated max_tokens, as in OpenAI's API.
    for name in ("max_tokens", "max_completion_tokens"):
        value = data.get(name)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise _BadRequest(f"{name} must be an integer of at least 1", name, model)
        limit, limit_param = value, name
    return _Chat(model, pairs, limit, limit_param, bool(stream), include_usage)


def _parse_embeddings(data: dict[str, Any]) -> tuple[str, list[str], int, str]:
    """Return (model, inputs, dimensions, encoding format) or raise :class:`_BadRequest`."""
    model = _model_of(data)
    raw = data.get("input")
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(item, str) for item in raw):
        inputs = raw
    else:
        raise _BadRequest("input must be a string or a non-empty array of strings", "input", model)
    dimensions = data.get("dimensions")
    if dimensions is None:
        dimensions = DEFAULT_DIMENSIONS
    elif not _is_int(dimensions) or not MIN_DIMENSIONS <= dimensions <= MAX_DIMENSIONS:
        raise _BadRequest(
            f"dimensions must be an integer from {MIN_DIMENSIONS} to {MAX_DIMENSIONS}", "dimensions", model
        )
    encoding = data.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise _BadRequest("encoding_format must be 'float' or 'base64'", "encoding_format", model)
    return model, inputs, dimensions, encoding


def create_app(api_keys: Sequence[str] | None = None) -> FastAPI:
    """Build a stub app with a fresh ledger, fault settings and metrics registry.

    Args:
        api_keys: Accepted bearer keys; ``None`` reads ``LLM_STUB_API_KEYS`` (comma
            separated) now. An empty list disables authentication.

    Example:
        >>> stub = create_app(api_keys=["sk-test"])
        >>> stub.state.ledger.snapshot()["requests"]
        0
    """
    keys = [k.encode() for k in (_keys_from_env() if api_keys is None else api_keys) if k]
    ledger = Ledger()
    faults = FaultInjector()
    metrics = StubMetrics()
    seen_models: set[str] = set()

    app = FastAPI(
        title="agentverify LLM stub",
        summary="OpenAI-compatible chat and embeddings with exact token accounting and fault knobs.",
        version="1",
    )
    app.state.ledger = ledger
    app.state.faults = faults
    app.state.metrics = metrics

    @app.exception_handler(StarletteHTTPException)
    async def openai_shaped_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # An SDK call to an endpoint the stub lacks (say /v1/responses) must read as
        # OpenAI's own 404, not FastAPI's {"detail": ...}.
        if not request.url.path.startswith("/v1/"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        message = (f"Invalid URL ({request.method} {request.url.path})" if exc.status_code == 404
                   else str(exc.detail))
        return _error(exc.status_code, message, "invalid_request_error", None)

    def authorized(request: Request) -> bool:
        if not keys:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        presented = token.strip().encode()
        # Compare against every key without short-circuiting on the first match.
        return sum(hmac.compare_digest(presented, key) for key in keys) > 0

    def refuse(endpoint: str) -> JSONResponse:
        metrics.request(_UNKNOWN_MODEL, endpoint, 401)
        # Never echo the presented key, not even in part.
        return _error(
            401,
            "Incorrect or missing API key. Send 'Authorization: Bearer <key>' with a key "
            f"listed in {API_KEYS_ENV}.",
            "invalid_request_error",
            "invalid_api_key",
        )

    def bad_request(endpoint: str, exc: _BadRequest) -> JSONResponse:
        ledger.record_error(exc.model)
        metrics.request(exc.model or _UNKNOWN_MODEL, endpoint, 400)
        return _error(400, exc.message, "invalid_request_error", "invalid_request", exc.param)

    async def injected(request: Request, decision: FaultDecision, model: str, endpoint: str,
                       call: dict[str, Any]) -> Response | None:
        """Apply a fault decision; return the answer if the request fails or hangs."""
        if decision.delay_s:
            await asyncio.sleep(decision.delay_s)
        if not decision.fail:
            return None
        hung_s: float | None = None
        if decision.mode == "hang":
            started = time.monotonic()
            if await faults.hold(decision.hang_s, lambda: _client_gone(request)):
                ledger.record_error(model, call=call, status=_CLIENT_CLOSED, fault="hang")
                metrics.request(model, endpoint, _CLIENT_CLOSED)
                return Response(status_code=_CLIENT_CLOSED)  # nobody is left to read it
            hung_s = round(time.monotonic() - started, 3)
        status, body, headers = injected_error(decision.status, decision.retry_after_s, model, endpoint,
                                               hung_s=hung_s)
        ledger.record_error(model, call=call, status=status, fault=decision.mode)
        metrics.request(model, endpoint, status)
        error = body["error"]
        return _error(status, error["message"], error["type"], error["code"], headers=headers)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        """OpenAI chat completions (JSON or server-sent events), deterministic, exact usage."""
        if not authorized(request):
            return refuse("chat")
        try:
            chat = _parse_chat(await _json_body(request))
        except _BadRequest as exc:
            return bad_request("chat", exc)
        model = chat.model
        call = ledger.open_call("chat", model, stream=chat.stream, limit_param=chat.limit_param,
                                limit=chat.limit, retry_count=_retry_count(request))
        decision = faults.decide(model, "chat")  # decided on arrival, before any await
        if decision is not None:
            failure = await injected(request, decision, model, "chat", call)
            if failure is not None:
                return failure
        content, finish_reason = generate_answer(model, chat.messages, chat.limit)
        prompt = sum(count_tokens(text) + MESSAGE_OVERHEAD for _, text in chat.messages) + REPLY_PRIMING
        completion = count_tokens(content)
        # A stream is billed in full when it starts, exactly as the same call unstreamed.
        ledger.record_chat(model, prompt, completion, call=call, finish_reason=finish_reason)
        seen_models.add(model)
        metrics.request(model, "chat", 200)
        metrics.add_tokens(model, "prompt", prompt)
        metrics.add_tokens(model, "completion", completion)
        completion_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        if chat.stream:
            first_token_s = decision.first_token_s if decision is not None else 0.0
            head, deltas, tail = chat_events(completion_id, created, model, content, finish_reason, usage,
                                             include_usage=chat.include_usage)
            return StreamingResponse(_sse(head, deltas, tail, first_token_s), media_type="text/event-stream",
                                     headers=_SSE_HEADERS)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": usage,
            }
        )

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        """OpenAI embeddings: deterministic feature-hashing vectors, exact usage."""
        if not authorized(request):
            return refuse("embeddings")
        try:
            model, inputs, dimensions, encoding = _parse_embeddings(await _json_body(request))
        except _BadRequest as exc:
            return bad_request("embeddings", exc)
        call = ledger.open_call("embeddings", model, retry_count=_retry_count(request))
        decision = faults.decide(model, "embeddings")
        if decision is not None:
            failure = await injected(request, decision, model, "embeddings", call)
            if failure is not None:
                return failure
        data = []
        tokens = 0
        for i, text in enumerate(inputs):
            tokens += count_tokens(text)
            # Both encodings carry the same float32 values (what a model produces), so a
            # client's base64 decode equals the float list exactly.
            packed = struct.pack(f"<{dimensions}f", *embed(text, dimensions))
            vector: Any = (base64.b64encode(packed).decode("ascii") if encoding == "base64"
                           else list(struct.unpack(f"<{dimensions}f", packed)))
            data.append({"object": "embedding", "index": i, "embedding": vector})
        ledger.record_embeddings(model, tokens, call=call)
        seen_models.add(model)
        metrics.request(model, "embeddings", 200)
        metrics.add_tokens(model, "embedding", tokens)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        """Models this stub has answered for (it accepts any model name)."""
        if not authorized(request):
            return refuse("models")
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "llm-stub"}
                    for m in sorted(seen_models)
                ],
            }
        )

    @app.get("/ledger")
    async def get_ledger() -> Response:
        """Exact usage since start or the last reset, in total and per model."""
        return JSONResponse(ledger.snapshot())

    @app.get("/ledger/calls")
    async def get_calls(since: int = Query(0, ge=0), limit: int = Query(CALL_LOG_SIZE, ge=1)) -> Response:
        """The logged calls numbered above ``since`` (at most ``limit``), oldest first."""
        return JSONResponse(ledger.calls(since, limit))

    @app.post("/ledger/reset")
    async def reset_ledger() -> Response:
        """Zero the ledger and return it."""
        ledger.reset()
        return JSONResponse(ledger.snapshot())

    @app.get("/faults")
    async def get_faults() -> Response:
        """Current fault settings with their state and counters."""
        return JSONResponse(faults.describe())

    @app.post("/faults")
    async def set_faults(request: Request) -> Response:
        """Replace the fault settings (omitted keys take defaults); restarts the counts."""
        raw = await request.body()
        try:
            settings = FaultSettings.model_validate(json.loads(raw) if raw.strip() else {})
        except ValueError as exc:  # ValidationError is a ValueError, and so is bad JSON
            if isinstance(exc, ValidationError):
                message, param = describe_validation_error(exc)
            else:
                message, param = "POST /faults: the body is not valid JSON", None
            return _error(422, message, "invalid_request_error", "invalid_faults", param)
        faults.configure(settings)
        return JSONResponse(faults.describe())

    @app.delete("/faults")
    async def clear_faults() -> Response:
        """Remove every fault (held requests are answered now) and return the state."""
        faults.clear()
        return JSONResponse(faults.describe())

    @app.get("/health")
    async def health() -> Response:
        """Liveness: always ``{"status": "ok"}``."""
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of this app's own registry."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _sse(head: bytes, deltas: list[bytes], tail: bytes, first_token_s: float) -> AsyncIterator[bytes]:
    """The events of one stream; the first content delta waits ``first_token_s``."""
    yield head
    if first_token_s > 0:
        await asyncio.sleep(first_token_s)
    if deltas:
        yield deltas[0]
    for start in range(1, len(deltas), _STREAM_BATCH):
        yield b"".join(deltas[start : start + _STREAM_BATCH])
    yield tail


app = create_app()
