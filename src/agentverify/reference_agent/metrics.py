"""The agent's Prometheus metrics, in the app's own registry.

Each app gets its own :class:`~prometheus_client.CollectorRegistry` (tests build
several apps in one process; the global default registry would refuse the second).
Names are a contract with the Grafana dashboard and the Prometheus gates:

=================================  ===========  =========================================
metric                             type         labels
=================================  ===========  =========================================
``requests_total``                 counter      ``type`` (``chat``)
``request_latency_seconds``        histogram    ``type``
``requests_error_total``           counter      ``error`` (see :data:`ERROR_KINDS`)
``token_usage_total``              counter      ``model``, ``kind`` (prompt|completion|embedding)
``llm_cost_usd_total``             counter      ``model``
``cache_requests_total``           counter      ``result`` (hit|miss)
``llm_requests_total``             counter      ``model``, ``outcome`` (ok|error|timeout)
``agent_info``                     gauge        ``version``, ``replica`` (always 1)
=================================  ===========  =========================================

Every label value the dashboard or a gate queries is created at 0 when the app starts,
so a query returns a series before the first request or error.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from agentverify.reference_agent.llm import Usage
from agentverify.reference_agent.settings import AgentSettings

__all__ = ["ERROR_KINDS", "LATENCY_BUCKETS", "AgentMetrics"]

ERROR_KINDS = (
    "llm_error",
    "llm_timeout",
    "vector_store_error",
    "cache_error",
    "rate_limited",
    "injected",
    "internal",
    "invalid_request",
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LLM_OUTCOMES = ("ok", "error", "timeout")


class AgentMetrics:
    """All metrics of one agent app, pre-initialised from its settings.

    Args:
        settings: Gives the model names to pre-create series for, the prices and the
            ``agent_info`` labels.
        registry: Where to register (a new one by default).

    Example:
        >>> m = AgentMetrics(AgentSettings())
        >>> b'requests_error_total{error="llm_error"} 0.0' in m.render()
        True
    """

    def __init__(self, settings: AgentSettings, registry: CollectorRegistry | None = None):
        """Create and pre-initialise every metric; see the class docstring."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self._cost = settings.cost
        r = self.registry
        self.requests = Counter("requests_total", "Requests by type.", ["type"], registry=r)
        self.latency = Histogram(
            "request_latency_seconds",
            "Latency of /chat requests.",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "requests_error_total", "Failed requests by error kind.", ["error"], registry=r
        )
        self.tokens = Counter(
            "token_usage_total", "LLM tokens as reported by the API.", ["model", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "llm_cost_usd_total", "LLM spend in USD from cost.prices.", ["model"], registry=r
        )
        self.cache = Counter(
            "cache_requests_total", "Answer cache lookups.", ["result"], registry=r
        )
        self.llm_requests = Counter(
            "llm_requests_total", "HTTP attempts to the LLM API.", ["model", "outcome"],
            registry=r,
        )
        self.info = Gauge("agent_info", "Version and replica of this agent.",
                          ["version", "replica"], registry=r)

        self.requests.labels(type="chat")
        self.latency.labels(type="chat")
        for kind in ERROR_KINDS:
            self.errors.labels(error=kind)
        for result in ("hit", "miss"):
            self.cache.labels(result=result)
        chat_models = dict.fromkeys([settings.model.model_name, settings.model.backup.model_name])
        embedding_model = settings.cost.embedding_model
        for model in chat_models:
            self.tokens.labels(model=model, kind="prompt")
            self.tokens.labels(model=model, kind="completion")
        self.tokens.labels(model=embedding_model, kind="embedding")
        for model in [*chat_models, embedding_model]:
            self.cost.labels(model=model)
            for outcome in LLM_OUTCOMES:
                self.llm_requests.labels(model=model, outcome=outcome)
        self.info.labels(version=settings.version, replica=settings.replica).set(1)

    def error(self, kind: str) -> None:
        """Count one failed request of ``kind``."""
        self.errors.labels(error=kind).inc()

    def llm_attempt(self, model: str, outcome: str) -> None:
        """Count one HTTP attempt to the LLM API."""
        self.llm_requests.labels(model=model, outcome=outcome).inc()

    def chat_usage(self, model: str, usage: Usage) -> None:
        """Count the tokens and the cost of one chat completion, exactly as reported."""
        self.tokens.labels(model=model, kind="prompt").inc(usage.prompt_tokens)
        self.tokens.labels(model=model, kind="completion").inc(usage.completion_tokens)
        self.cost.labels(model=model).inc(
            self._cost.cost_usd(model, usage.prompt_tokens, usage.completion_tokens)
        )

    def embedding_usage(self, model: str, tokens: int) -> None:
        """Count the tokens and the cost of one embeddings call."""
        self.tokens.labels(model=model, kind="embedding").inc(tokens)
        self.cost.labels(model=model).inc(self._cost.cost_usd(model, tokens))

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
