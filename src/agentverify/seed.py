"""The reference deployment's ``config.yaml`` format: one schema, read by everyone.

The seed's file has ``environment``, ``log_level`` and the sections ``model``,
``vector_store``, ``cache`` and ``monitoring``; agentverify adds ``rate_limit`` and
``cost``, which agents read too (the reference agent prices tokens and rate-limits from
them). This module is the only definition of those sections. agentverify's own
configuration (:class:`agentverify.config.Config`) extends :class:`SeedConfig` with the
sections only agentverify reads; the reference agent's settings extend it with what only
an agent knows (its version, its API keys).

Two readers, two attitudes to unknown keys: agentverify refuses them (a typo must not
pass a gate), an agent ignores them (it shares the file with other tools) —
:func:`known_keys` drops what the schema does not know before an agent validates.

Only pydantic is imported here: agents import this module at start-up.

Example:
    >>> CostSection().cost_usd("gpt-4", 1_000_000, 500_000)
    60.0
    >>> known_keys(SeedConfig, {"cache": {"ttl": 60, "colour": "red"}, "other_tool": {}})
    {'cache': {'ttl': 60}}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "BackupModelSection",
    "CacheSection",
    "check_duration",
    "CostSection",
    "ModelSection",
    "MonitoringSection",
    "Objectives",
    "Price",
    "RateLimitSection",
    "SeedConfig",
    "Section",
    "VectorStoreSection",
    "duration_seconds",
    "known_keys",
]

_DURATION = re.compile(r"^\d+(ms|s|m|h)$")
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Section(BaseModel):
    """A section of the file. Unknown keys are errors (agents prune them first)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BackupModelSection(Section):
    """The backup LLM API the API-error runbook switches to (``base_url`` empty: the
    primary's)."""

    provider: str = "openai"
    model_name: str = "gpt-3.5-turbo"
    base_url: str | None = None
    api_key_env: str = Field("OPENAI_BACKUP_API_KEY", pattern=_ENV_NAME)


class ModelSection(Section):
    """The seed's ``model`` section: which LLM the agent calls and how. Keys are never in
    the file: ``api_key_env`` names the variable holding the key."""

    provider: str = "openai"
    model_name: str = "gpt-4"
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(2000, ge=1)
    retry_count: int = Field(3, ge=0, le=20)
    timeout: float = Field(30.0, gt=0)
    base_url: str | None = Field(
        None, description="OpenAI-compatible base URL; empty means the stack's LLM stub.")
    api_key_env: str = Field("OPENAI_API_KEY", pattern=_ENV_NAME)
    backup: BackupModelSection = Field(default_factory=BackupModelSection)


class VectorStoreSection(Section):
    """The seed's ``vector_store`` section: where the knowledge base lives."""

    type: Literal["milvus"] = "milvus"
    host: str = "milvus.internal"
    port: int = Field(19530, ge=1, le=65535)
    collection: str = Field("agent_knowledge", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    #: Milvus allows up to 32,768 dimensions for a float vector
    dim: int = Field(64, ge=2, le=32768)
    top_k: int = Field(3, ge=1, le=100)
    timeout: float = Field(5.0, gt=0, description="seconds for one Milvus call")

    @property
    def uri(self) -> str:
        """The gRPC URI pymilvus connects to."""
        return f"http://{self.host}:{self.port}"


class CacheSection(Section):
    """The seed's ``cache`` section: the answer cache and how long an answer stays."""

    type: Literal["redis"] = "redis"
    url: str = "redis://redis.internal:6379"
    ttl: int = Field(3600, ge=1)


def check_duration(v: str) -> str:
    if not _DURATION.match(v):
        raise ValueError("expected a Prometheus duration such as '1s' or '15s'")
    return v


def duration_seconds(duration: str) -> float:
    """Seconds of a Prometheus duration (``"500ms"``, ``"15s"``, ``"5m"``, ``"1h"``).

    Example:
        >>> duration_seconds("5m"), duration_seconds("500ms")
        (300.0, 0.5)
    """
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit):
            return float(duration[: -len(unit)]) * units[unit]
    return float(duration)


class MonitoringSection(Section):
    """The seed's ``monitoring`` section, plus the cadence agentverify renders."""

    prometheus_port: int = Field(9090, ge=1, le=65535)
    grafana_port: int = Field(3000, ge=1, le=65535)
    alert_webhook: str | None = None
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"

    @field_validator("scrape_interval", "evaluation_interval")
    @classmethod
    def _duration(cls, v: str) -> str:
        return check_duration(v)


class RateLimitSection(Section):
    """A token bucket per client, shared across replicas: ``requests_per_second`` refill,
    ``burst`` capacity."""

    enabled: bool = False
    requests_per_second: float = Field(20.0, gt=0)
    burst: int = Field(20, ge=1)


class Price(Section):
    """USD per million tokens of one model (embeddings are billed as input).

    Example:
        >>> Price(input_per_million=30.0, output_per_million=60.0).input_per_million
        30.0
    """

    input_per_million: float = Field(..., ge=0)
    output_per_million: float = Field(0.0, ge=0)


def default_prices() -> dict[str, Price]:
    # USD per million tokens; public list prices at the time of writing.
    return {
        "gpt-4": Price(input_per_million=30.0, output_per_million=60.0),
        "gpt-3.5-turbo": Price(input_per_million=0.5, output_per_million=1.5),
        "text-embedding-3-small": Price(input_per_million=0.02, output_per_million=0.0),
    }


class CostSection(Section):
    """Token prices, the budget and the cost gates."""

    prices: dict[str, Price] = Field(default_factory=default_prices)
    budget_usd: float | None = Field(None, ge=0)
    max_cost_per_request_usd: float | None = Field(None, ge=0)
    max_cost_per_1k_requests_usd: float | None = Field(None, ge=0)
    embedding_model: str = "text-embedding-3-small"

    def cost_usd(self, model: str, input_tokens: int, output_tokens: int = 0) -> float:
        """Price of one call; a model without a price costs 0."""
        price = self.prices.get(model)
        if price is None:
            return 0.0
        return (input_tokens * price.input_per_million
                + output_tokens * price.output_per_million) / 1_000_000


class Objectives(Section):
    """Latency / error / throughput objectives; ``None`` means not gated.

    The one SLO type: the environment's ``slo:`` section extends it, a step's ``slo:``
    override is one, and the load driver checks figures against one.
    """

    p50_ms: float | None = Field(None, gt=0)
    p95_ms: float | None = Field(None, gt=0)
    p99_ms: float | None = Field(None, gt=0)
    error_ratio: float | None = Field(None, ge=0, le=1)
    min_rps: float | None = Field(None, ge=0)

    def merged(self, overrides: Objectives | Mapping[str, Any] | None) -> Objectives:
        """These objectives with every non-``None`` value of ``overrides`` on top."""
        if overrides is None:
            return Objectives(**{k: getattr(self, k) for k in Objectives.model_fields})
        items = overrides.model_dump() if isinstance(overrides, BaseModel) else dict(overrides)
        values = {k: getattr(self, k) for k in Objectives.model_fields}
        values.update({k: v for k, v in items.items() if k in values and v is not None})
        return Objectives(**values)


class SeedConfig(Section):
    """The whole seed-format file, as an agent reads it."""

    environment: str = "dev"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    model: ModelSection = Field(default_factory=ModelSection)
    vector_store: VectorStoreSection = Field(default_factory=VectorStoreSection)
    cache: CacheSection = Field(default_factory=CacheSection)
    monitoring: MonitoringSection = Field(default_factory=MonitoringSection)
    rate_limit: RateLimitSection = Field(default_factory=RateLimitSection)
    cost: CostSection = Field(default_factory=CostSection)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def seed_dict(self) -> dict[str, Any]:
        """The file's sections as plain data (what a deploy writes for the agent)."""
        return self.model_dump(include=set(SeedConfig.model_fields))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def known_keys(model: type[BaseModel], data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` without the keys ``model`` does not know, recursively (mappings of
    sections, e.g. ``cost.prices``, keep every name and prune each value)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        sub = _model_of(field.annotation)
        origin = getattr(field.annotation, "__origin__", None)
        if sub is not None and isinstance(value, Mapping):
            if origin is dict:
                out[key] = {k: known_keys(sub, v) if isinstance(v, Mapping) else v
                            for k, v in value.items()}
            else:
                out[key] = known_keys(sub, value)
        else:
            out[key] = value
    return out
