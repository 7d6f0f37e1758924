"""The agent's Prometheus metrics, in a registry of its own (served at ``GET /metrics``).

=========================================  =========  ==============================
name                                       type       labels
=========================================  =========  ==============================
``support_agent_requests_total``           counter    ``route`` (every HTTP request)
``support_agent_request_duration_seconds`` histogram  none (``POST /v1/ask`` only)
``support_agent_failures_total``           counter    ``reason`` (see :data:`REASONS`)
``support_agent_llm_tokens_total``         counter    ``model``, ``direction``
=========================================  =========  ==============================

Tokens are the ``usage`` the API returned: ``direction`` is ``prompt`` or ``completion``;
an embeddings call has only prompt tokens, counted under the embedding model.

Example:
    >>> m = Metrics()
    >>> m.tokens("gpt-4o-mini", prompt=12, completion=5)
    >>> b"support_agent_llm_tokens_total" in m.render()
    True
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "REASONS", "ROUTES", "Metrics"]

#: Why a request failed: the values of the ``reason`` label.
REASONS = (
    "bad_request",      # the body is not {"question": str, ...}
    "rate_limited",     # 429: the client's bucket is empty
    "llm_error",        # the LLM API failed after the SDK's retries
    "knowledge_error",  # Milvus failed or the collection is missing
    "fault_injected",   # SUPPORT_AGENT_FAULT=errors
    "internal",         # a bug: anything else
)
#: Route label values; any other path is counted as ``other``.
ROUTES = ("/v1/ask", "/healthz", "/metrics")

# Answers take from a few ms (cache hit) to tens of seconds (slow LLM, retries).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The four metric families, registered in a private :class:`CollectorRegistry`.

    A private registry keeps two apps in one process (tests) apart and keeps library
    metrics out of ``/metrics``.
    """

    def __init__(self) -> None:
        """Create the registry and pre-create the known label values (so they read 0)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "support_agent_requests", "HTTP requests served, by route.", ["route"], registry=self.registry
        )
        self.duration = Histogram(
            "support_agent_request_duration_seconds", "Time to answer POST /v1/ask.",
            buckets=_BUCKETS, registry=self.registry,
        )
        self._failures = Counter(
            "support_agent_failures", "Failed /v1/ask requests, by reason.", ["reason"], registry=self.registry
        )
        self._tokens = Counter(
            "support_agent_llm_tokens", "LLM tokens as reported by the API's usage.",
            ["model", "direction"], registry=self.registry,
        )
        for route in (*ROUTES, "other"):
            self._requests.labels(route=route)
        for reason in REASONS:
            self._failures.labels(reason=reason)

    def expect_models(self, chat_model: str, embedding_model: str) -> None:
        """Pre-create the token series of the configured models, so they read 0 before use."""
        self._tokens.labels(model=chat_model, direction="prompt")
        self._tokens.labels(model=chat_model, direction="completion")
        self._tokens.labels(model=embedding_model, direction="prompt")

    def request(self, route: str) -> None:
        """Count one HTTP request on ``route`` (unknown paths become ``other``)."""
        self._requests.labels(route=route if route in ROUTES else "other").inc()

    def failure(self, reason: str) -> None:
        """Count one failed /v1/ask for ``reason`` (one of :data:`REASONS`)."""
        self._failures.labels(reason=reason if reason in REASONS else "internal").inc()

    def tokens(self, model: str, *, prompt: int, completion: int = 0) -> None:
        """Add the usage of one API call."""
        self._tokens.labels(model=model, direction="prompt").inc(prompt)
        if completion:
            self._tokens.labels(model=model, direction="completion").inc(completion)

    def render(self) -> bytes:
        """The text exposition format of the registry."""
        return generate_latest(self.registry)
