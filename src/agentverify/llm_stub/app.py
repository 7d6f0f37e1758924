"""The LLM stub's FastAPI application: OpenAI-compatible endpoints plus control knobs.

Serve it with one worker (the ledger lives in memory)::

    LLM_STUB_API_KEYS=sk-test python -m uvicorn agentverify.llm_stub.app:app \\
        --host 127.0.0.1 --port 8900

Handlers do no logging and no per-request work beyond tokenizing, hashing and a JSON
dump; answers and embeddings of repeated prompts come from an LRU cache.

Example:
    >>> stub = create_app(api_keys=["sk-test"])   # or read LLM_STUB_API_KEYS
    >>> sorted(r.path for r in stub.routes if r.path.startswith(("/v1", "/ledger")))
    ['/ledger', '/ledger/reset', '/v1/chat/completions', '/v1/embeddings', '/v1/models']
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
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agentverify.llm_stub.answer import generate_answer
from agentverify.llm_stub.state import FaultInjector, FaultSettings, Ledger, StubMetrics
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


class _BadRequest(Exception):
    """A request the stub refuses with 400, as OpenAI would."""

    def __init__(self, message: str, param: str | None = None, model: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.model = model


def _error(status: int, message: str, type_: str, code: str | None, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


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


def _parse_chat(data: dict[str, Any]) -> tuple[str, list[tuple[str, str]], int | None]:
    """Return (model, [(role, content)], token limit) or raise :class:`_BadRequest`."""
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
    if data.get("stream"):
        raise _BadRequest("stream=true is not supported by the LLM stub", "stream", model)
    temperature = data.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2
    ):
        raise _BadRequest("temperature must be a number between 0 and 2", "temperature", model)
    limit: int | None = None
    # max_completion_tokens supersedes the deprecated max_tokens, as in OpenAI's API.
    for name in ("max_tokens", "max_completion_tokens"):
        value = data.get(name)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise _BadRequest(f"{name} must be an integer of at least 1", name, model)
        limit = value
    return model, pairs, limit


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

    async def injected(model: str, endpoint: str) -> JSONResponse | None:
        """Apply the fault settings; return the error response if this request fails."""
        fail, delay = faults.decide(model, endpoint)  # decided on arrival, before any await
        if delay:
            await asyncio.sleep(delay)
        if not fail:
            return None
        status = faults.settings.status_code
        ledger.record_error(model)
        metrics.request(model, endpoint, status)
        return _error(
            status,
            f"Injected fault: the LLM stub failed this {endpoint} request on purpose.",
            "server_error",
            "injected_fault",
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        """OpenAI chat completions with a deterministic answer and exact usage."""
        if not authorized(request):
            return refuse("chat")
        try:
            model, messages, limit = _parse_chat(await _json_body(request))
        except _BadRequest as exc:
            return bad_request("chat", exc)
        failure = await injected(model, "chat")
        if failure is not None:
            return failure
        content, finish_reason = generate_answer(model, messages, limit)
        prompt = sum(count_tokens(text) + MESSAGE_OVERHEAD for _, text in messages) + REPLY_PRIMING
        completion = count_tokens(content)
        ledger.record_chat(model, prompt, completion)
        seen_models.add(model)
        metrics.request(model, "chat", 200)
        metrics.add_tokens(model, "prompt", prompt)
        metrics.add_tokens(model, "completion", completion)
        return JSONResponse(
            {
                "id": "chatcmpl-" + uuid.uuid4().hex[:24],
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
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
        failure = await injected(model, "embeddings")
        if failure is not None:
            return failure
        data = []
        tokens = 0
        for i, text in enumerate(inputs):
            tokens += count_tokens(text)
            vector: Any = embed(text, dimensions)
            if encoding == "base64":
                vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": vector})
        ledger.record_embeddings(model, tokens)
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

    @app.post("/ledger/reset")
    async def reset_ledger() -> Response:
        """Zero the ledger and return it."""
        ledger.reset()
        return JSONResponse(ledger.snapshot())

    @app.get("/faults")
    async def get_faults() -> Response:
        """Current fault settings with ``matched`` and ``injected`` counts."""
        return JSONResponse(faults.describe())

    @app.post("/faults")
    async def set_faults(settings: FaultSettings) -> Response:
        """Replace the fault settings (omitted fields take defaults); restarts the count."""
        faults.configure(settings)
        return JSONResponse(faults.describe())

    @app.delete("/faults")
    async def clear_faults() -> Response:
        """Remove every fault."""
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


app = create_app()
