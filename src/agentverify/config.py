"""Load and validate agentverify configuration.

The file format is the reference deployment's ``config.yaml`` (sections ``model``,
``vector_store``, ``cache``, ``monitoring``) plus agentverify's own sections (``stack``,
``slo``, ``cost``, ``load``, ``rate_limit``) and per-environment overlays under
``environments:``.

Precedence, lowest first (resolved once per session, then passed explicitly)::

    built-in defaults < file < environments.<env> overlay < AGENTVERIFY_* variables
                      < pytest ini < command line

Example:
    >>> cfg = load_config("agentverify.yaml", env="staging")   # doctest: +SKIP
    >>> cfg.stack.replicas
    3

Every validation problem becomes one :class:`~agentverify.errors.ConfigError` line naming
the file, the key path and what was expected. Secrets never live in the file: the model
section names the *environment variable* that holds the API key (``api_key_env``).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agentverify.errors import ConfigError

__all__ = [
    "Config",
    "DEFAULT_ENVIRONMENTS",
    "ENV_PREFIX",
    "load_config",
    "parse_override",
]

ENV_PREFIX = "AGENTVERIFY_"
DEFAULT_CONFIG_NAME = "agentverify.yaml"
_DURATION = re.compile(r"^\d+(ms|s|m|h)$")
_MEMORY = re.compile(r"^\d+(\.\d+)?[KMGkmg]?$")


class _Section(BaseModel):
    # Unknown keys are errors: a typo in a gate threshold must not silently pass a gate.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# --------------------------------------------------------------------------- seed sections


class BackupModelConfig(_Section):
    """The backup LLM API the API-error runbook switches to."""

    provider: str = "openai"
    model_name: str = "gpt-3.5-turbo"
    base_url: str | None = None
    api_key_env: str = "OPENAI_BACKUP_API_KEY"


class ModelConfig(_Section):
    """The seed's ``model`` section: which LLM the agent calls and how."""

    provider: str = "openai"
    model_name: str = "gpt-4"
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(2000, ge=1)
    retry_count: int = Field(3, ge=0, le=20)
    timeout: float = Field(30.0, gt=0)
    base_url: str | None = Field(
        None, description="OpenAI-compatible base URL; empty means the stack's LLM stub."
    )
    api_key_env: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    backup: BackupModelConfig = Field(default_factory=BackupModelConfig)


class VectorStoreConfig(_Section):
    """The seed's ``vector_store`` section."""

    type: Literal["milvus"] = "milvus"
    host: str = "milvus.internal"
    port: int = Field(19530, ge=1, le=65535)
    collection: str = Field("agent_knowledge", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    dim: int = Field(64, ge=2, le=4096)
    top_k: int = Field(3, ge=1, le=100)


class CacheConfig(_Section):
    """The seed's ``cache`` section."""

    type: Literal["redis"] = "redis"
    url: str = "redis://redis.internal:6379"
    ttl: int = Field(3600, ge=1)


class MonitoringConfig(_Section):
    """The seed's ``monitoring`` section, plus the scrape cadence agentverify renders."""

    prometheus_port: int = Field(9090, ge=1, le=65535)
    grafana_port: int = Field(3000, ge=1, le=65535)
    alert_webhook: str | None = None
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"

    @field_validator("scrape_interval", "evaluation_interval")
    @classmethod
    def _duration(cls, v: str) -> str:
        if not _DURATION.match(v):
            raise ValueError("expected a Prometheus duration such as '1s' or '15s'")
        return v


# --------------------------------------------------------------------- agentverify sections


class ResourceSet(_Section):
    cpus: float = Field(1.0, gt=0)
    memory: str = "2G"

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        if not _MEMORY.match(str(v)):
            raise ValueError("expected a size such as '512M' or '2G'")
        return str(v)


class ResourcesConfig(_Section):
    """Per-replica limits and reservations (the seed: cpus 1 / 2G, reserve 0.5 / 1G)."""

    limits: ResourceSet = Field(default_factory=lambda: ResourceSet(cpus=1.0, memory="2G"))
    reservations: ResourceSet = Field(
        default_factory=lambda: ResourceSet(cpus=0.5, memory="1G")
    )


class VersionConfig(_Section):
    """Knobs of one agent version. The reference agent honours them, so a rehearsal can
    roll out a version that is broken on purpose."""

    fail_health: bool = Field(False, description="GET /health answers 503")
    error_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of /chat answered 500")
    latency_ms: int = Field(0, ge=0, description="added to every /chat")
    image: str | None = Field(None, description="docker backend: the agent image of this version")


class AgentServiceConfig(_Section):
    """How to run the agent under test."""

    app: str = Field(
        "agentverify.reference_agent.main:app",
        description="ASGI app (module:attr) served by uvicorn on the local backend",
    )
    port: int = Field(8000, ge=1, le=65535)
    health_path: str = "/health"
    workers: int = Field(1, ge=1, le=16)
    env: dict[str, str] = Field(default_factory=dict)


class StackConfig(_Section):
    """What agentverify brings up."""

    backend: Literal["auto", "local", "docker"] = "auto"
    replicas: int = Field(3, ge=1, le=32)
    version: str = Field("v1", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    versions: dict[str, VersionConfig] = Field(default_factory=dict)
    agent: AgentServiceConfig = Field(default_factory=AgentServiceConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    images: dict[str, str] = Field(default_factory=dict)
    pull: bool = False
    start_timeout: float = Field(60.0, gt=0)
    knowledge_dir: str = "fixtures/knowledge"
    alertmanager: bool = True

    @field_validator("versions")
    @classmethod
    def _version_names(cls, v: dict[str, VersionConfig]) -> dict[str, VersionConfig]:
        for name in v:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
                raise ValueError(f"version name {name!r} must match [A-Za-z0-9][A-Za-z0-9_.-]*")
        return v

    def version_knobs(self, version: str) -> VersionConfig:
        return self.versions.get(version, VersionConfig())


class RateLimitConfig(_Section):
    """Per-client rate limit, shared across replicas through Redis."""

    enabled: bool = False
    requests_per_second: float = Field(20.0, gt=0)
    burst: int = Field(20, ge=1)


class SLOConfig(_Section):
    """Latency / error / throughput objectives; unset means not gated."""

    p50_ms: float | None = Field(None, gt=0)
    p95_ms: float | None = Field(None, gt=0)
    p99_ms: float | None = Field(None, gt=0)
    error_ratio: float | None = Field(None, ge=0, le=1)
    min_rps: float | None = Field(None, ge=0)
    abort_on_fail: bool = False


class PriceConfig(_Section):
    input_per_million: float = Field(..., ge=0)
    output_per_million: float = Field(..., ge=0)


def _default_prices() -> dict[str, PriceConfig]:
    # USD per million tokens; public list prices at the time of writing.
    return {
        "gpt-4": PriceConfig(input_per_million=30.0, output_per_million=60.0),
        "gpt-3.5-turbo": PriceConfig(input_per_million=0.5, output_per_million=1.5),
        "text-embedding-3-small": PriceConfig(input_per_million=0.02, output_per_million=0.0),
    }


class CostConfig(_Section):
    prices: dict[str, PriceConfig] = Field(default_factory=_default_prices)
    budget_usd: float | None = Field(None, ge=0)
    max_cost_per_request_usd: float | None = Field(None, ge=0)
    max_cost_per_1k_requests_usd: float | None = Field(None, ge=0)
    embedding_model: str = "text-embedding-3-small"


class LoadConfig(_Section):
    users: int = Field(10, ge=1)
    spawn_rate: float = Field(5.0, gt=0)
    duration_s: float = Field(30.0, gt=0)
    repeat_ratio: float = Field(0.5, ge=0, le=1)
    user_rps: float | None = Field(None, gt=0, description="pace each user; None: no pause")
    prompts: str = "fixtures/prompts.jsonl"
    workers: int = Field(0, ge=0, le=64)
    locustfile: str | None = None
    shape: Literal["constant", "ramp", "step"] = "constant"


class Config(_Section):
    """The resolved configuration of one environment."""

    environment: str = "dev"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    model: ModelConfig = Field(default_factory=ModelConfig)
    vector_store: VectorStoreConfig = Field(default_factory=VectorStoreConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    stack: StackConfig = Field(default_factory=StackConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    slo: SLOConfig = Field(default_factory=SLOConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    load: LoadConfig = Field(default_factory=LoadConfig)

    # Not part of the file: where it came from, for messages and relative paths.
    source: str = Field("<defaults>", exclude=True)
    root: str = Field(".", exclude=True)

    def path(self, relative: str) -> Path:
        """Resolve a path from the config (e.g. ``stack.knowledge_dir``) against its file."""
        p = Path(relative)
        return p if p.is_absolute() else Path(self.root) / p

    def seed_dict(self) -> dict[str, Any]:
        """The seed-format ``config.yaml`` the deploy step writes for the agent."""
        data = self.model_dump(
            include={"environment", "log_level", "model", "vector_store", "cache",
                     "monitoring", "rate_limit", "cost"}
        )
        return data


# Used when no config file exists, so `pytest --agentverify-env staging` works anywhere.
DEFAULT_ENVIRONMENTS: dict[str, dict[str, Any]] = {
    "dev": {"stack": {"replicas": 2}, "monitoring": {"scrape_interval": "1s",
                                                     "evaluation_interval": "1s"}},
    "staging": {"stack": {"replicas": 3}, "monitoring": {"scrape_interval": "1s",
                                                         "evaluation_interval": "1s"}},
    "production": {"stack": {"replicas": 3}},
}

_TOP_KEYS = set(Config.model_fields) - {"source", "root"}


# --------------------------------------------------------------------------- loading


def _deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _has_path(data: Mapping[str, Any], parts: tuple[Any, ...]) -> bool:
    node: Any = data
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key.path=value`` (value read as YAML, so ``3`` is an int, ``true`` a bool)."""
    if "=" not in text:
        raise ConfigError("expected KEY=VALUE, e.g. stack.replicas=5", source="--set", key=text)
    key, _, raw = text.partition("=")
    key = key.strip()
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_.-]+)*$", key):
        raise ConfigError("expected a dotted key such as stack.replicas", source="--set", key=key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``AGENTVERIFY_STACK__REPLICAS=5`` -> ``{"stack.replicas": 5}`` (``__`` nests)."""
    out: dict[str, Any] = {}
    reserved = {"ENV", "CONFIG", "BACKEND", "RUN_ID", "STATE_DIR", "REPORT_DIR"}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):]
        if rest in reserved or "__" not in rest and rest.lower() not in _TOP_KEYS:
            continue
        key = ".".join(p.lower() for p in rest.split("__"))
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def _describe_expected(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected', '')}, got {err.get('input')!r}"
    if kind in {"int_parsing", "int_type", "int_from_float"}:
        return f"expected an integer, got {err.get('input')!r}"
    if kind in {"float_parsing", "float_type"}:
        return f"expected a number, got {err.get('input')!r}"
    if kind in {"bool_parsing", "bool_type"}:
        return f"expected true or false, got {err.get('input')!r}"
    if kind in {"string_type"}:
        return f"expected a string, got {err.get('input')!r}"
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return f"expected a mapping, got {err.get('input')!r}"
    if kind == "missing":
        return "required key is missing"
    bounds = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"),
              "less_than_equal": ("le", "<="), "less_than": ("lt", "<")}
    if kind in bounds:
        bound, word = bounds[kind]
        return f"expected a value {word} {ctx.get(bound)}, got {err.get('input')!r}"
    if kind == "string_pattern_mismatch":
        return f"expected text matching {ctx.get('pattern')}, got {err.get('input')!r}"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys a section accepts, for an 'unknown key' message."""
    model: Any = Config
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        # unwrap dict[str, Model] / Optional[Model]
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)),
                     None)
        if model is None:
            return []
    return sorted(k for k in getattr(model, "model_fields", {}) if k not in {"source", "root"})


def _validate(data: dict[str, Any], *, describe_source) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err.get("loc", ()))
        key = ".".join(str(p) for p in loc) or "<top level>"
        message = _describe_expected(err)
        if err.get("type") == "extra_forbidden":
            allowed = _allowed_keys(loc)
            if allowed:
                message += f"; expected one of: {', '.join(allowed)}"
        source, key = describe_source(loc, key)
        raise ConfigError(message, source=source, key=key) from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read file ({exc.strerror})", source=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: {problem}", source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}",
                          source=str(path))
    return data


def find_config(start: Path | None = None) -> Path | None:
    """``agentverify.yaml`` in ``start`` (default: the working directory), if present."""
    candidate = (start or Path.cwd()) / DEFAULT_CONFIG_NAME
    return candidate if candidate.is_file() else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: str | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    override_source: str = "command line",
) -> Config:
    """Resolve the configuration for one environment.

    Args:
        path: the config file; ``None`` means ``./agentverify.yaml`` when present, else
            built-in defaults.
        env: environment name; ``None`` means ``AGENTVERIFY_ENV``, else the file's
            ``environment:`` key, else ``dev``.
        overrides: dotted keys (``{"stack.replicas": 5}``) from ini / command line.
        environ: the process environment (``AGENTVERIFY_*``); defaults to ``os.environ``.

    Raises:
        ConfigError: one line naming the file, the key path and what was expected.
    """
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    file_path = Path(path) if path is not None else find_config()
    raw = _read_file(file_path) if file_path is not None else {}
    source = str(file_path) if file_path is not None else "<built-in defaults>"

    environments = raw.pop("environments", None)
    if environments is None:
        environments = DEFAULT_ENVIRONMENTS if file_path is None else {}
    if not isinstance(environments, dict) or not all(
        isinstance(v, dict) or v is None for v in environments.values()
    ):
        raise ConfigError("expected a mapping of environment name -> overlay mapping",
                          source=source, key="environments")
    environments = {str(k): (v or {}) for k, v in environments.items()}

    chosen = env or environ.get(f"{ENV_PREFIX}ENV") or raw.get("environment") or "dev"
    chosen = str(chosen)
    if environments and chosen not in environments:
        raise ConfigError(
            f"unknown environment {chosen!r}; expected one of: {', '.join(sorted(environments))}",
            source=source, key="environments",
        )

    env_vars = _env_overrides(environ)

    def build(name: str, *, with_overrides: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        overlay = environments.get(name, {})
        data = _deep_merge(raw, overlay)
        data["environment"] = name
        layer: dict[str, Any] = {}
        if with_overrides:
            for key, value in env_vars.items():
                _set_path(data, key, value)
                _set_path(layer, key, ("env", key))
            for key, value in overrides.items():
                _set_path(data, key, value)
                _set_path(layer, key, ("override", key))
        return data, overlay

    def validate(name: str, *, with_overrides: bool) -> Config:
        data, overlay = build(name, with_overrides=with_overrides)

        def describe(loc: tuple[Any, ...], key: str) -> tuple[str, str]:
            if with_overrides:
                for k in overrides:
                    if key == k or key.startswith(k + ".") or k.startswith(key + "."):
                        return override_source, k
                for k in env_vars:
                    if key == k or key.startswith(k + ".") or k.startswith(key + "."):
                        return "environment", ENV_PREFIX + k.upper().replace(".", "__")
            if _has_path(overlay, loc):
                return source, f"environments.{name}.{key}"
            return source, key

        cfg = _validate(data, describe_source=describe)
        return cfg

    # A broken overlay of another environment must fail this run too: CI for staging is
    # where a typo in the production overlay should be caught.
    for other in environments:
        if other != chosen:
            validate(other, with_overrides=False)
    cfg = validate(chosen, with_overrides=True)
    cfg.source = source
    cfg.root = str(file_path.parent.resolve()) if file_path is not None else str(Path.cwd())
    return cfg


def environment_names(path: str | os.PathLike[str] | None = None) -> list[str]:
    """The environments a config file defines (built-in ones when there is no file)."""
    file_path = Path(path) if path is not None else find_config()
    if file_path is None:
        return sorted(DEFAULT_ENVIRONMENTS)
    raw = _read_file(file_path)
    envs = raw.get("environments") or {}
    return sorted(envs) if isinstance(envs, dict) else []
