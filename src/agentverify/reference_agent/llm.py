"""Calls to an OpenAI-compatible LLM API: chat completions and embeddings, with retries.

Retries follow :class:`RetryPolicy`: up to ``retry_count`` retries on connect errors,
timeouts, HTTP 429 and 5xx, sleeping ``0.05 s * 2**n`` (capped at 1 s) between them.
Anything else (e.g. 401, 400) fails at once. After the last attempt the call raises
:class:`LLMError` with ``kind`` ``"llm_timeout"`` when that attempt timed out, else
``"llm_error"``. Messages never contain the API key or the prompt.

Example:
    >>> [RetryPolicy(retries=3).delay(n) for n in range(3)]
    [0.05, 0.1, 0.2]
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import SecretStr

__all__ = [
    "ChatResult",
    "EmbeddingResult",
    "LLMClient",
    "LLMEndpoint",
    "LLMError",
    "RetryPolicy",
    "Usage",
]

log = logging.getLogger("agentverify.reference_agent")

#: Called after every HTTP attempt with (model, outcome), outcome in ok|error|timeout.
AttemptHook = Callable[[str, str], None]


class LLMError(Exception):
    """The LLM API failed after all retries.

    Attributes:
        kind: ``"llm_timeout"`` if the last attempt timed out, else ``"llm_error"``.
        status: The last HTTP status, if any.
    """

    def __init__(self, message: str, *, kind: str = "llm_error", status: int | None = None):
        """Create the error; see the class docstring."""
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass(frozen=True)
class LLMEndpoint:
    """Where and as whom to call: one of the primary or backup API.

    The key is a :class:`~pydantic.SecretStr`, so the endpoint's repr is safe to log.
    """

    name: str
    model_name: str
    base_url: str
    api_key: SecretStr | None = None

    def headers(self) -> dict[str, str]:
        """HTTP headers for a call (the bearer token when a key is set)."""
        if self.api_key is None or not self.api_key.get_secret_value():
            return {}
        return {"Authorization": f"Bearer {self.api_key.get_secret_value()}"}

    def url(self, path: str) -> str:
        """``base_url`` joined with ``path`` (e.g. ``/chat/completions``)."""
        return self.base_url.rstrip("/") + path


@dataclass(frozen=True)
class Usage:
    """Tokens reported by the API for one call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        """The OpenAI-shaped ``usage`` block."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True)
class ChatResult:
    """One chat completion."""

    text: str
    usage: Usage
    model: str
    finish_reason: str | None = None


@dataclass(frozen=True)
class EmbeddingResult:
    """Embeddings of a batch of inputs, in input order."""

    vectors: list[list[float]]
    tokens: int
    model: str


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a failing LLM call.

    Attributes:
        retries: Retries after the first attempt (``model.retry_count``).
        base: First backoff in seconds.
        cap: Longest backoff in seconds.
    """

    retries: int = 3
    base: float = 0.05
    cap: float = 1.0
    retry_statuses: frozenset[int] = field(
        default_factory=lambda: frozenset({408, 409, 429, 500, 502, 503, 504})
    )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based).

        A server's ``Retry-After`` is honoured up to ``cap``.
        """
        backoff = min(self.cap, self.base * float(2**attempt))
        if retry_after is not None and retry_after > 0:
            backoff = max(backoff, min(self.cap, retry_after))
        return backoff

    def retryable_status(self, status: int) -> bool:
        """Whether an HTTP status is worth another attempt (429 and 5xx)."""
        return status in self.retry_statuses or status >= 500


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


class LLMClient:
    """Async client of an OpenAI-compatible API.

    Args:
        http: The shared ``httpx.AsyncClient`` (inject one with a ``MockTransport``
            in unit tests).
        policy: Retry policy.
        timeout: Seconds for one attempt (``model.timeout``).
        on_attempt: Called after every attempt with (model, outcome) for metrics.
        sleep: Awaitable sleep, injectable so tests do not wait.

    Example:
        >>> import httpx, asyncio
        >>> def handler(request):
        ...     return httpx.Response(200, json={"choices": [{"message": {"content": "hi"},
        ...         "finish_reason": "stop"}], "usage": {"prompt_tokens": 3,
        ...         "completion_tokens": 1}})
        >>> async def demo():
        ...     async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as h:
        ...         ep = LLMEndpoint("primary", "gpt-4", "http://llm/v1")
        ...         return await LLMClient(h).chat(ep, [{"role": "user", "content": "x"}])
        >>> asyncio.run(demo()).usage.total_tokens
        4
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        policy: RetryPolicy | None = None,
        *,
        timeout: float = 30.0,
        on_attempt: AttemptHook | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        """Create the client; see the class docstring."""
        self._http = http
        self.policy = policy or RetryPolicy()
        self._timeout = timeout
        self._on_attempt = on_attempt
        self._sleep = sleep

    def _record(self, model: str, outcome: str) -> None:
        if self._on_attempt is not None:
            self._on_attempt(model, outcome)

    async def _post(self, endpoint: LLMEndpoint, path: str, model: str, body: dict[str, Any]
                    ) -> dict[str, Any]:
        """POST with retries; return the decoded JSON of the first 2xx answer."""
        last_message = "no attempt made"
        last_kind = "llm_error"
        last_status: int | None = None
        attempts = self.policy.retries + 1
        for attempt in range(attempts):
            retry_after: float | None = None
            try:
                response = await self._http.post(
                    endpoint.url(path),
                    json=body,
                    headers=endpoint.headers(),
                    timeout=self._timeout,
                )
            except httpx.TimeoutException as exc:
                self._record(model, "timeout")
                last_kind, last_status = "llm_timeout", None
                last_message = f"{type(exc).__name__} after {self._timeout:g}s"
                retryable = True
            except httpx.TransportError as exc:
                self._record(model, "error")
                last_kind, last_status = "llm_error", None
                last_message = f"{type(exc).__name__}: {exc}"
                retryable = True
            else:
                if response.is_success:
                    try:
                        data = response.json()
                    except ValueError:
                        self._record(model, "error")
                        raise LLMError(
                            f"{endpoint.name} LLM API {path}: answer is not JSON",
                            status=response.status_code,
                        ) from None
                    self._record(model, "ok")
                    return data if isinstance(data, dict) else {}
                self._record(model, "error")
                last_kind, last_status = "llm_error", response.status_code
                last_message = f"HTTP {response.status_code}"
                if response.status_code in (401, 403):
                    last_message += " (the API refused the key: check the API key variable)"
                retryable = self.policy.retryable_status(response.status_code)
                retry_after = _retry_after(response)
            if not retryable or attempt == attempts - 1:
                break
            delay = self.policy.delay(attempt, retry_after)
            log.info("LLM %s %s failed (%s); retry %d/%d in %.2fs", endpoint.name, path,
                     last_message, attempt + 1, self.policy.retries, delay)
            await self._sleep(delay)
        raise LLMError(
            f"{endpoint.name} LLM API {endpoint.url(path)} (model {model}) failed after "
            f"{attempt + 1} attempt(s): {last_message}",
            kind=last_kind,
            status=last_status,
        )

    async def chat(
        self,
        endpoint: LLMEndpoint,
        messages: Sequence[dict[str, str]],
        *,
        temperature: float = 0.7,
        max_tokens: int | None = 2000,
    ) -> ChatResult:
        """One chat completion with ``endpoint.model_name`` (``max_tokens`` None: no
        limit is asked for).

        Raises:
            LLMError: After the retries are spent, or on a malformed answer.
        """
        body: dict[str, Any] = {
            "model": endpoint.model_name,
            "messages": list(messages),
            "temperature": temperature,
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        data = await self._post(endpoint, "/chat/completions", endpoint.model_name, body)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"{endpoint.name} LLM API: answer has no choices[0].message") from None
        usage = data.get("usage") or {}
        return ChatResult(
            text=str(text),
            usage=Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            ),
            model=str(data.get("model") or endpoint.model_name),
            finish_reason=choice.get("finish_reason"),
        )

    async def embed(
        self,
        endpoint: LLMEndpoint,
        inputs: Sequence[str],
        *,
        model: str,
        dimensions: int,
    ) -> EmbeddingResult:
        """Embed ``inputs`` with ``model`` at ``endpoint`` (its URL and key).

        Raises:
            LLMError: After the retries are spent, or when the answer does not hold
                one vector of ``dimensions`` floats per input.
        """
        body = {"model": model, "input": list(inputs), "dimensions": dimensions}
        data = await self._post(endpoint, "/embeddings", model, body)
        try:
            items = sorted(data["data"], key=lambda item: int(item.get("index", 0)))
            vectors = [[float(x) for x in item["embedding"]] for item in items]
        except (KeyError, TypeError, ValueError):
            raise LLMError(f"{endpoint.name} LLM API: embeddings answer has no data") from None
        if len(vectors) != len(inputs) or any(len(v) != dimensions for v in vectors):
            raise LLMError(
                f"{endpoint.name} LLM API: expected {len(inputs)} vector(s) of dim "
                f"{dimensions}, got {len(vectors)} of dim {len(vectors[0]) if vectors else 0}"
            )
        usage = data.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
        return EmbeddingResult(vectors=vectors, tokens=tokens, model=model)
