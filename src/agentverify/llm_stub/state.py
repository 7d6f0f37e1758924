"""In-memory state of one LLM stub process: the token ledger, fault knobs and metrics.

The stub runs as one asyncio process, so plain counter updates are exact as long as no
``await`` falls between reading and writing a counter; none of the methods here await.

Example:
    >>> ledger = Ledger()
    >>> ledger.record_chat("m", prompt=10, completion=5)
    >>> ledger.snapshot()["models"]["m"]["completion_tokens"]
    5
    >>> faults = FaultInjector()
    >>> faults.configure(FaultSettings(error_rate=0.5))
    >>> [faults.decide("m", "chat")[0] for _ in range(4)]
    [False, True, False, True]
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Ledger", "FaultSettings", "FaultInjector", "StubMetrics", "Endpoint"]

Endpoint = Literal["chat", "embeddings"]

_MODEL_FIELDS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "embedding_tokens",
    "chat_requests",
    "embedding_requests",
)


class Ledger:
    """Exact usage counters, in total and per model.

    ``requests`` counts successful (billed) requests; ``errors`` counts requests that
    were answered with an error after authentication (an injected fault or a 400).
    Only successful requests add tokens.
    """

    def __init__(self) -> None:
        self._models: dict[str, dict[str, int]] = {}
        self._unattributed_errors = 0  # 400s whose body named no usable model

    def _model(self, model: str) -> dict[str, int]:
        counters = self._models.get(model)
        if counters is None:
            counters = self._models[model] = dict.fromkeys(_MODEL_FIELDS, 0)
        return counters

    def record_chat(self, model: str, prompt: int, completion: int) -> None:
        """Count one successful chat completion."""
        c = self._model(model)
        c["requests"] += 1
        c["chat_requests"] += 1
        c["prompt_tokens"] += prompt
        c["completion_tokens"] += completion

    def record_embeddings(self, model: str, tokens: int) -> None:
        """Count one successful embeddings request."""
        c = self._model(model)
        c["requests"] += 1
        c["embedding_requests"] += 1
        c["embedding_tokens"] += tokens

    def record_error(self, model: str | None) -> None:
        """Count one failed request (no tokens); ``None``: only in the total."""
        if model is None:
            self._unattributed_errors += 1
        else:
            self._model(model)["errors"] += 1

    def reset(self) -> None:
        """Zero every counter."""
        self._models = {}
        self._unattributed_errors = 0

    def snapshot(self) -> dict[str, Any]:
        """Return the ledger as plain JSON-ready data (totals plus ``models``)."""
        totals = dict.fromkeys(_MODEL_FIELDS, 0)
        totals["errors"] = self._unattributed_errors
        models: dict[str, dict[str, int]] = {}
        for name, counters in self._models.items():
            models[name] = dict(counters)
            for key, value in counters.items():
                totals[key] += value
        return {**totals, "models": models}


class FaultSettings(BaseModel):
    """Fault knobs, as posted to ``POST /faults``; every field is optional.

    Example:
        >>> FaultSettings(error_rate=0.25, status_code=503, endpoints=["chat"]).active
        True
    """

    model_config = ConfigDict(extra="forbid")

    error_rate: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    status_code: int = Field(500, ge=400, le=599)
    latency_ms: float = Field(0.0, ge=0.0, le=600_000.0, allow_inf_nan=False)
    models: list[str] | None = None
    endpoints: list[Endpoint] | None = None

    @property
    def active(self) -> bool:
        """Whether the settings change any request at all."""
        return self.error_rate > 0.0 or self.latency_ms > 0.0

    def matches(self, model: str, endpoint: str) -> bool:
        """Whether a request for ``model`` on ``endpoint`` is subject to these faults."""
        return (self.models is None or model in self.models) and (
            self.endpoints is None or endpoint in self.endpoints
        )


class FaultInjector:
    """Decides, deterministically, which matching requests fail and how long they wait.

    The k-th matching request (k = 1, 2, ... since the last configure/clear) fails iff
    ``floor(k * rate) > floor((k - 1) * rate)``: rate 0.5 fails every 2nd request,
    0.25 every 4th, 1.0 all of them.
    """

    def __init__(self) -> None:
        self.settings = FaultSettings()
        self.matched = 0
        self.injected = 0
        self._rate = Fraction(0)

    def configure(self, settings: FaultSettings) -> None:
        """Replace the settings and restart the request count."""
        self.settings = settings
        self.matched = 0
        self.injected = 0
        # The rate as the decimal the user wrote (0.57 -> 57/100), so floor(k * rate)
        # is exact: in floats 0.57 * 100 is 56.99999999999999 and request 100 would pass.
        self._rate = Fraction(repr(settings.error_rate))

    def clear(self) -> None:
        """Remove every fault."""
        self.configure(FaultSettings())

    def decide(self, model: str, endpoint: str) -> tuple[bool, float]:
        """Return ``(fail, delay_seconds)`` for one request and count it."""
        s = self.settings
        if not s.active or not s.matches(model, endpoint):
            return False, 0.0
        self.matched += 1
        k, rate = self.matched, self._rate
        fail = (k * rate.numerator) // rate.denominator > (
            (k - 1) * rate.numerator
        ) // rate.denominator
        if fail:
            self.injected += 1
        return fail, s.latency_ms / 1000.0

    def describe(self) -> dict[str, Any]:
        """Return the settings plus ``active``, ``matched`` and ``injected`` counters."""
        return {
            **self.settings.model_dump(),
            "active": self.settings.active,
            "matched": self.matched,
            "injected": self.injected,
        }


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
