"""In-memory state of one LLM stub process: the token ledger, its call log and metrics.

The stub runs as one asyncio process, so plain counter updates are exact as long as no
``await`` falls between reading and writing a counter; none of the methods here await.
The fault knobs are in :mod:`agentverify.llm_stub.faults`.

Example:
    >>> ledger = Ledger()
    >>> ledger.record_chat("m", prompt=10, completion=5)
    >>> ledger.snapshot()["models"]["m"]["completion_tokens"]
    5
    >>> call = ledger.open_call("chat", "m", limit=None)
    >>> ledger.snapshot()["models"]["m"]["calls_without_max_tokens"]
    1
"""

from __future__ import annotations

from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter

__all__ = ["Ledger", "StubMetrics", "CALL_LOG_SIZE"]

#: Calls the call log keeps (``GET /ledger/calls``); the oldest are dropped first.
CALL_LOG_SIZE = 10_000

_MODEL_FIELDS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "embedding_tokens",
    "chat_requests",
    "embedding_requests",
    "calls_without_max_tokens",
)


class Ledger:
    """Exact usage counters, in total and per model, and a log of recent calls.

    ``requests`` counts successful (billed) requests; ``errors`` counts requests that
    were answered with an error after authentication (an injected fault or a 400).
    Only successful requests add tokens. ``calls_without_max_tokens`` counts every
    valid chat request (answered or faulted) that set neither ``max_tokens`` nor
    ``max_completion_tokens``; ``largest_max_tokens`` is the largest limit a chat
    request asked for (null: none did).

    Args:
        call_log_size: How many calls :meth:`calls` can return (oldest dropped first).
    """

    def __init__(self, call_log_size: int = CALL_LOG_SIZE) -> None:
        self._models: dict[str, dict[str, int]] = {}
        self._largest: dict[str, int] = {}
        self._unattributed_errors = 0  # 400s whose body named no usable model
        self._calls: deque[dict[str, Any]] = deque(maxlen=call_log_size)
        self._seq = 0  # never reset, so a reader's ``since`` cursor survives a reset

    def _model(self, model: str) -> dict[str, int]:
        counters = self._models.get(model)
        if counters is None:
            counters = self._models[model] = dict.fromkeys(_MODEL_FIELDS, 0)
        return counters

    def open_call(
        self,
        endpoint: str,
        model: str,
        *,
        stream: bool = False,
        limit_param: str | None = None,
        limit: int | None = None,
        retry_count: int | None = None,
    ) -> dict[str, Any]:
        """Log one valid request as it arrives; return its record to complete later.

        Args:
            endpoint: ``chat`` or ``embeddings``.
            model: The requested model.
            stream: Whether a chat asked for server-sent events.
            limit_param: ``max_tokens`` or ``max_completion_tokens``, whichever set the limit.
            limit: The completion token limit asked for (None: no limit).
            retry_count: The client's ``x-stainless-retry-count`` (the ``openai`` SDK's
                attempt number, 0 for the first), if it sent one.
        """
        self._seq += 1
        call = {
            "seq": self._seq,
            "endpoint": endpoint,
            "model": model,
            "stream": stream,
            "max_tokens_param": limit_param,
            "max_tokens": limit,
            "retry_count": retry_count,
            "status": None,
            "fault": None,
            "finish_reason": None,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "embedding_tokens": 0,
        }
        if endpoint == "chat":
            if limit is None:
                self._model(model)["calls_without_max_tokens"] += 1
            else:
                self._model(model)
                self._largest[model] = max(limit, self._largest.get(model, 0))
        self._calls.append(call)
        return call

    def record_chat(self, model: str, prompt: int, completion: int, *,
                    call: dict[str, Any] | None = None, finish_reason: str | None = None) -> None:
        """Count one successful chat completion (and complete its call record)."""
        c = self._model(model)
        c["requests"] += 1
        c["chat_requests"] += 1
        c["prompt_tokens"] += prompt
        c["completion_tokens"] += completion
        if call is not None:
            call.update(status=200, finish_reason=finish_reason, prompt_tokens=prompt,
                        completion_tokens=completion)

    def record_embeddings(self, model: str, tokens: int, *, call: dict[str, Any] | None = None) -> None:
        """Count one successful embeddings request (and complete its call record)."""
        c = self._model(model)
        c["requests"] += 1
        c["embedding_requests"] += 1
        c["embedding_tokens"] += tokens
        if call is not None:
            call.update(status=200, embedding_tokens=tokens)

    def record_error(self, model: str | None, *, call: dict[str, Any] | None = None,
                     status: int | None = None, fault: str | None = None) -> None:
        """Count one failed request (no tokens); ``None``: only in the total.

        Args:
            model: The requested model, if the body named one.
            call: Its call record, if it was logged.
            status: The status it got (499: the client left before an answer).
            fault: ``error`` or ``hang`` when the failure was injected.
        """
        if model is None:
            self._unattributed_errors += 1
        else:
            self._model(model)["errors"] += 1
        if call is not None:
            call.update(status=status, fault=fault)

    def reset(self) -> None:
        """Zero every counter and empty the call log (call numbers keep counting)."""
        self._models = {}
        self._largest = {}
        self._unattributed_errors = 0
        self._calls.clear()

    def calls(self, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """Return logged calls numbered above ``since``, oldest first.

        Returns:
            ``{"calls": [...], "last_seq": n, "dropped": d}``: ``last_seq`` is the number
            of the newest call (pass it as ``since`` next time); ``dropped`` counts calls
            above ``since`` that are no longer in the log (it was full, or reset).
        """
        kept = [dict(c) for c in self._calls if c["seq"] > since]
        oldest = self._calls[0]["seq"] if self._calls else self._seq + 1
        dropped = max(0, oldest - max(since, 0) - 1)
        return {"calls": kept if limit is None else kept[:limit], "last_seq": self._seq,
                "dropped": dropped}

    def snapshot(self) -> dict[str, Any]:
        """Return the ledger as plain JSON-ready data (totals plus ``models``)."""
        totals: dict[str, Any] = dict.fromkeys(_MODEL_FIELDS, 0)
        totals["errors"] = self._unattributed_errors
        models: dict[str, dict[str, Any]] = {}
        for name, counters in self._models.items():
            models[name] = {**counters, "largest_max_tokens": self._largest.get(name)}
            for key, value in counters.items():
                totals[key] += value
        totals["largest_max_tokens"] = max(self._largest.values(), default=None)
        return {**totals, "models": models}


class StubMetrics:
    """Prometheus counters of one stub app, in a registry of its own.

    A private registry keeps two apps in one process (tests) from colliding and keeps
    the stub's series out of any host process's global registry.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "llm_stub_requests",
            "Requests answered by the LLM stub.",
            ("model", "endpoint", "status"),
            registry=self.registry,
        )
        self.tokens = Counter(
            "llm_stub_tokens",
            "Tokens accounted by the LLM stub.",
            ("model", "kind"),
            registry=self.registry,
        )

    def request(self, model: str, endpoint: str, status: int) -> None:
        """Count one answered request."""
        self.requests.labels(model, endpoint, str(status)).inc()

    def add_tokens(self, model: str, kind: str, n: int) -> None:
        """Add ``n`` tokens of ``kind`` (prompt, completion or embedding)."""
        self.tokens.labels(model, kind).inc(n)
