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
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agentverify.contract import ContractSection
from agentverify.errors import ConfigError
from agentverify.monitoring.metrics import MetricsMapping
from agentverify.seed import MonitoringSection, Objectives, Section, SeedConfig, check_duration
from agentverify.stack.placeholders import USER_PLACEHOLDERS, expand_user_template

__all__ = [
    "Config",
    "DEFAULT_RUNBOOKS",
    "NOTIFY_FIELDS",
    "RunbookOperation",
    "the_one_key",
    "SLOConfig",
    "with_overrides",
    "DEFAULT_ENVIRONMENTS",
    "ENV_PREFIX",
    "REFERENCE_APP",
    "deep_merge",
    "load_config",
    "parse_override",
]

ENV_PREFIX = "AGENTVERIFY_"
DEFAULT_CONFIG_NAME = "agentverify.yaml"
_MEMORY = re.compile(r"^\d+(\.\d+)?[KMGkmg]?$")


class _Section(Section):
    """A section only agentverify reads (unknown keys are errors)."""


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
    """Knobs of one agent version. The reference agent honours ``fail_health``,
    ``error_rate``, ``latency_ms``, ``health_ignores``, ``cache_required``,
    ``cache_without_ttl`` and ``drop_max_tokens``, so a rehearsal can run a version that is
    broken on purpose; any agent gets ``env`` (e.g. its own fault flag)."""

    fail_health: bool = Field(False, description="GET /health answers 503")
    error_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of /chat answered 500")
    latency_ms: int = Field(0, ge=0, description="added to every /chat")
    health_ignores: list[Literal["redis", "milvus"]] = Field(
        default_factory=list, description="dependencies GET /health does not check (a defect)")
    cache_required: bool = Field(
        False, description="/chat fails when Redis fails (a defect: the cache is an optimisation)")
    cache_without_ttl: bool = Field(
        False, description="answers cached without a TTL (a defect: Redis grows until it evicts)")
    drop_max_tokens: bool = Field(
        False, description="chat completions asked for without max_tokens (a defect: long, "
                           "costly answers)")
    image: str | None = Field(None, description="docker backend: the agent image of this version")
    env: dict[str, str] = Field(default_factory=dict,
                                description="variables this version gets over stack.agent.env")

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_env(v)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        try:
            expand_user_template(str(value), {"version": ""})
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return {k: str(v) for k, v in env.items()}


def _check_argv(argv: list[str] | None,
                allowed: dict[str, str] = USER_PLACEHOLDERS) -> list[str] | None:
    if argv is None:
        return None
    for i, item in enumerate(argv):
        try:
            expand_user_template(str(item), {"version": ""}, allowed=allowed)
        except ValueError as exc:
            raise ValueError(f"item {i} ({item!r}): {exc}") from None
    return [str(a) for a in argv]


def _var(default: str | None) -> Any:
    return Field(default, pattern=_ENV_NAME.pattern)


class AgentVariables(_Section):
    """``stack.agent.variables``: the names of the variables the agent is given (null:
    not given). The values are the live stack's, as the agent reaches it."""

    environment: str | None = _var("ENVIRONMENT")
    config: str | None = _var("AGENT_CONFIG")
    version: str | None = _var("AGENT_VERSION")
    replica: str | None = _var("AGENT_REPLICA")
    host: str | None = _var("HOST")
    port: str | None = _var("PORT")
    openai_base_url: str | None = _var("OPENAI_BASE_URL")
    #: the key of the model in use; it is also given under model.api_key_env's name
    openai_api_key: str | None = _var("OPENAI_API_KEY")
    openai_backup_base_url: str | None = _var(None)
    #: the backup's key; also given under model.backup.api_key_env's name
    openai_backup_api_key: str | None = _var("OPENAI_BACKUP_API_KEY")
    model: str | None = _var(None)
    redis_url: str | None = _var("REDIS_URL")
    milvus_uri: str | None = _var("MILVUS_URI")
    milvus_host: str | None = _var("MILVUS_HOST")
    milvus_port: str | None = _var("MILVUS_PORT")
    log_file: str | None = _var("AGENT_LOG_FILE")

    @model_validator(mode="after")
    def _distinct(self) -> AgentVariables:
        seen: dict[str, str] = {}
        for key in AgentVariables.model_fields:
            name = getattr(self, key)
            if name is None:
                continue
            if name in seen:
                raise ValueError(f"{seen[name]} and {key} are both {name!r}: one variable "
                                 "cannot carry two values")
            seen[name] = key
        return self


REFERENCE_APP = "agentverify.reference_agent.main:app"
_NO_PORT = {k: v for k, v in USER_PLACEHOLDERS.items() if k not in ("port", "host", "bind")}


class AgentServiceConfig(_Section):
    """How to run the agent under test, how to talk to it and what it is given."""

    app: str = Field(REFERENCE_APP, description="ASGI app (module:attr) served by uvicorn")
    command: list[str] | None = Field(
        None, min_length=1, description="argv of the agent (any language), instead of app")
    source: str | None = Field(
        None, description="docker: directory with a pyproject.toml or requirements.txt; "
                          "`agentverify images build` layers it on the base image")
    ingest: list[str] | None = Field(
        None, min_length=1, description="argv of the agent's own ingest job (replaces ours)")
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=16)
    env: dict[str, str] = Field(default_factory=dict)
    config: dict[str, Any] = Field(
        default_factory=dict, description="merged into the config.yaml written for the agent")
    variables: AgentVariables = Field(default_factory=AgentVariables)
    contract: ContractSection = Field(default_factory=ContractSection)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_env(v)

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str] | None) -> list[str] | None:
        return _check_argv(v)

    @field_validator("ingest")
    @classmethod
    def _ingest(cls, v: list[str] | None) -> list[str] | None:
        return _check_argv(v, _NO_PORT)

    @model_validator(mode="after")
    def _one_way_to_run(self) -> AgentServiceConfig:
        # judged on values, not on what was set: a config is dumped and re-validated
        # whenever overrides are applied (with_overrides)
        if self.command is not None and self.app != REFERENCE_APP:
            raise ValueError("give app (an ASGI app served by uvicorn) or command (any "
                             "program), not both")
        if self.command is not None and self.workers != 1:
            raise ValueError("workers applies to app (uvicorn --workers); with command, pass "
                             "your program's own option in the argv")
        return self

    @property
    def runs_app(self) -> bool:
        """True when the agent is an ASGI app agentverify serves with uvicorn."""
        return self.command is None


class FaultsConfig(_Section):
    """The fault proxy every agent replica reaches its dependencies through."""

    enabled: bool = Field(True, description="false: wire the agents to Redis, Milvus and the "
                                            "LLM directly (no fault steps possible)")
    proxy: Literal["auto", "builtin", "toxiproxy"] = Field(
        "auto", description="auto: a real toxiproxy (toxiproxy-server on PATH, or the image "
                            "stack.images.toxiproxy) when there is one, else the built-in server")
    edges: list[Literal["redis", "milvus", "llm", "agent", "lb"]] = Field(
        default_factory=lambda: ["redis", "milvus", "llm", "agent"],
        description="the edges routed through the proxy: each replica's dependencies, "
                    "nginx -> each replica (agent), clients -> nginx (lb: every request "
                    "then crosses the proxy once more)")


class LoadBalancerConfig(_Section):
    """How nginx spreads traffic over the replicas."""

    retries: int = Field(3, ge=0, le=10, description="upstream attempts per request "
                                                     "(proxy_next_upstream_tries); 0: no retry")
    drain_s: float = Field(0.5, ge=0, le=300, description=(
        "seconds between switching nginx away from an instance and stopping it (the "
        "deregistration delay): requests nginx's old workers accepted before the reload "
        "still reach it"))


class StackConfig(_Section):
    """What agentverify brings up."""

    backend: str = Field("auto", pattern=r"^[a-z][a-z0-9_-]*$",
                         description="auto, or a backend name (local, docker, ...)")
    replicas: int = Field(3, ge=1, le=32)
    version: str = Field("v1", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    versions: dict[str, VersionConfig] = Field(default_factory=dict)
    agent: AgentServiceConfig = Field(default_factory=AgentServiceConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    images: dict[str, str] = Field(default_factory=dict)
    image_tag: str = Field("local", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
                           description="tag of the agentverify/* image names")
    pull: bool = False
    start_timeout: float = Field(60.0, gt=0)
    knowledge_dir: str = "fixtures/knowledge"
    alertmanager: bool = True
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    lb: LoadBalancerConfig = Field(default_factory=LoadBalancerConfig)

    @field_validator("backend")
    @classmethod
    def _backend_name(cls, v: str) -> str:
        from agentverify.stack.backend import backend_names

        valid = ["auto", *backend_names()]
        if v not in valid:
            raise ValueError(f"expected one of {', '.join(valid)}, got {v!r}")
        return v

    @field_validator("versions")
    @classmethod
    def _version_names(cls, v: dict[str, VersionConfig]) -> dict[str, VersionConfig]:
        for name in v:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
                raise ValueError(f"version name {name!r} must match [A-Za-z0-9][A-Za-z0-9_.-]*")
        return v

    def version_knobs(self, version: str) -> VersionConfig:
        return self.versions.get(version, VersionConfig())


class SLOConfig(Objectives):
    """The environment's objectives, gated by ``load`` (unset: not gated)."""

    abort_on_fail: bool = False


class KnownAnswer(_Section):
    """A question whose answer must cite a given document of the knowledge base."""

    question: str = Field(..., min_length=1)
    source: str = Field(..., min_length=1, description="the document's title as the reply "
                                                       "names it (contract reply.source_title)")


def _default_known_answers() -> list[KnownAnswer]:
    # questions of fixtures/knowledge/ whose answers cite one known document
    return [
        KnownAnswer(question="How do I reset my password?",
                    source="Resetting Your Nimbus Cloud Password"),
        KnownAnswer(question="Which regions can I deploy to, and what latency should I expect?",
                    source="Hosting Regions, Data Residency and Latency"),
        KnownAnswer(question="How do I set up single sign-on with SAML or OIDC?",
                    source="Setting Up Single Sign-On (SAML and OIDC)"),
    ]


# --------------------------------------------------------------------------- runbooks


def the_one_key(model: BaseModel, problem: str) -> str:
    """The one field of a one-of model that is set (an operation, a trigger).

    Raises:
        ValueError: none or several are set (``problem`` says what is expected).
    """
    given = [name for name in type(model).model_fields if getattr(model, name) is not None]
    if len(given) != 1:
        raise ValueError(f"{problem}; got {given or 'none'}")
    return given[0]


class ScaleOperation(_Section):
    """Scale the agent (the seed: "scale to 5 instances"); ``baseline``: stack.replicas."""

    replicas: int | Literal["baseline"] = Field(..., description="replicas, or baseline")

    @field_validator("replicas")
    @classmethod
    def _at_least_one(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 32:
            raise ValueError(f"expected 1 to 32 replicas or 'baseline', got {v}")
        return v


class RateLimitOperation(_Section):
    """Turn the fleet's per-client rate limit on (or off); ``None`` keeps the config's
    ``rate_limit`` value."""

    enabled: bool = True
    requests_per_second: float | None = Field(None, gt=0)
    burst: int | None = Field(None, ge=1)


class SwitchLLMOperation(_Section):
    """Make every replica use the primary or the backup LLM API."""

    use: Literal["primary", "backup"]


class ClearCacheOperation(_Section):
    """Delete every cached answer."""


class RestartOperation(_Section):
    """Restart the agents one at a time, drained, under traffic (the seed's restart());
    after ``stop_agents`` it starts them again."""

    health_timeout_s: float | None = Field(None, gt=0)


class StopAgentsOperation(_Section):
    """Take every agent replica out of nginx and stop it (the service is down)."""


class RestoreBackupOperation(_Section):
    """Restore the last verified backup into the live stack: Redis (through the stack,
    from the RDB file) and Milvus (every collection rebuilt through pymilvus)."""

    parts: list[Literal["redis", "milvus"]] = Field(
        default_factory=lambda: ["redis", "milvus"], min_length=1,
        description="what to restore (both: leaving one out is a broken runbook)")


#: placeholders a notify text may use
NOTIFY_FIELDS = ("runbook", "alert", "env", "operation", "error")


class NotifyOperation(_Section):
    """Tell the team: a Slack-style ``{"text": ...}`` to the stack's receiver."""

    text: str = Field(..., min_length=1, description="may use {runbook}, {alert}, {env}")

    @field_validator("text")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(v) if name is not None}
        except ValueError as exc:
            raise ValueError(f"expected a text with {{name}} placeholders: {exc}") from None
        unknown = sorted(names - set(NOTIFY_FIELDS))
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}; expected one of "
                             + ", ".join("{%s}" % n for n in NOTIFY_FIELDS))
        return v


class RunbookOperation(_Section):
    """One operation of a runbook, written ``- NAME: {params}`` (exactly one key).

    Example:
        >>> RunbookOperation.model_validate({"scale": {"replicas": 5}}).describe()
        'scale 5'
        >>> RunbookOperation.model_validate("clear_cache").name
        'clear_cache'
    """

    scale: ScaleOperation | None = None
    rate_limit: RateLimitOperation | None = None
    switch_llm: SwitchLLMOperation | None = None
    clear_cache: ClearCacheOperation | None = None
    restart: RestartOperation | None = None
    stop_agents: StopAgentsOperation | None = None
    restore_backup: RestoreBackupOperation | None = None
    notify: NotifyOperation | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # `- clear_cache` and `- clear_cache:` (no parameters) mean `- clear_cache: {}`
        if isinstance(data, str):
            data = {data: {}}
        if isinstance(data, Mapping):
            if len(data) == 1:
                data = {k: ({} if v is None else v) for k, v in data.items()}
            else:  # a dumped operation lists every name, the unused ones as None
                data = {k: v for k, v in data.items() if v is not None}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> RunbookOperation:
        the_one_key(self, "an operation has exactly one key (its name), e.g. "
                          "'- scale: {replicas: 5}'")
        return self

    @property
    def name(self) -> str:
        return the_one_key(self, "")

    @property
    def params(self) -> _Section:
        return getattr(self, self.name)  # type: ignore[no-any-return]

    def describe(self) -> str:
        """``scale 5``, ``switch_llm backup``, ``rate_limit on 5/s burst 10``, ``notify``."""
        p = self.params
        if isinstance(p, ScaleOperation):
            return f"scale {p.replicas}"
        if isinstance(p, SwitchLLMOperation):
            return f"switch_llm {p.use}"
        if isinstance(p, RateLimitOperation):
            if not p.enabled:
                return "rate_limit off"
            rate = "" if p.requests_per_second is None else f" {p.requests_per_second:g}/s"
            burst = "" if p.burst is None else f" burst {p.burst}"
            return f"rate_limit on{rate}{burst}"
        if isinstance(p, RestoreBackupOperation):
            return "restore_backup " + "+".join(p.parts)
        return self.name


def _default_runbooks() -> dict[str, list[RunbookOperation]]:
    """The seed's emergency plans (EmergencyPlan): each notifies the error of a failed step."""
    def ops(*items: Any) -> list[RunbookOperation]:
        return [RunbookOperation.model_validate(i) for i in items]

    return {
        "high_load": ops({"scale": {"replicas": 5}}, {"rate_limit": {"enabled": True}},
                         {"notify": {"text": "{alert} on {env}: scaled the agent to 5 "
                                             "replicas and enabled rate limiting"}}),
        "api_error": ops({"switch_llm": {"use": "backup"}}, "clear_cache", "restart"),
        "data_corruption": ops("stop_agents", "restore_backup", "restart"),
    }


DEFAULT_RUNBOOKS = tuple(_default_runbooks())


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


class AlertRulesSection(_Section):
    """How the shipped alert rules are rendered: their rate window, how long a condition
    must hold before it fires, and thresholds (``None``: the environment's ``slo:``).

    Defaults are a production's; a rehearsal's overlays shorten ``window`` and ``for``.
    """

    # `for` is Prometheus' word (a Python keyword): the field is for_, read and written as for
    model_config = ConfigDict(extra="forbid", validate_assignment=True, serialize_by_alias=True)

    window: str = Field("5m", description="rate() window of the alert expressions")
    for_: str | None = Field(None, alias="for", description="how long a condition holds "
                             "before the alert fires; None: twice the evaluation interval")
    error_ratio: float | None = Field(None, ge=0, le=1, description="AgentHighErrorRate "
                                      "threshold; None: slo.error_ratio (else 0.05)")
    p95_ms: float | None = Field(None, gt=0, description="AgentHighLatency threshold; None: "
                                 "slo.p95_ms (else 2000)")
    load_rps: float | None = Field(None, gt=0, description="AgentHighLoad threshold: the "
                                   "request rate the fleet is planned for; None: 10 x "
                                   "slo.min_rps (else 500)")
    client_errors: list[str] = Field(
        default_factory=lambda: ["rate_limited", "invalid_request"],
        description="error kinds (monitoring.metrics.errors.label values) that are the "
                    "client's doing, left out of AgentHighErrorRate: a 429 is the rate "
                    "limit working")

    @field_validator("window", "for_")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        return None if v is None else check_duration(v)


class AlertmanagerSection(_Section):
    """Alertmanager's route timings (Alertmanager's own defaults: a production's)."""

    group_wait: str = Field("30s", description="wait before the first notification of a "
                                                "new group (to batch alerts)")
    group_interval: str = Field("5m", description="wait before notifying a change to a "
                                                   "group already notified (resolved too)")
    repeat_interval: str = Field("4h", description="re-send a still-firing alert")

    @field_validator("group_wait", "group_interval", "repeat_interval")
    @classmethod
    def _duration(cls, v: str) -> str:
        return check_duration(v)


class MonitoringConfig(MonitoringSection):
    """The seed's ``monitoring`` section plus what only agentverify reads — the agent's
    metric names, how alert rules and Alertmanager are rendered — none of which is
    written into the agent's config.yaml."""

    metrics: MetricsMapping = Field(default_factory=MetricsMapping)
    alerts: AlertRulesSection = Field(default_factory=AlertRulesSection)
    alertmanager: AlertmanagerSection = Field(default_factory=AlertmanagerSection)


class Config(SeedConfig):
    """The resolved configuration of one environment: the seed's file plus the sections
    only agentverify reads."""

    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    stack: StackConfig = Field(default_factory=StackConfig)
    slo: SLOConfig = Field(default_factory=SLOConfig)
    load: LoadConfig = Field(default_factory=LoadConfig)
    known_answers: list[KnownAnswer] = Field(
        default_factory=_default_known_answers,
        description="questions whose answers must cite a given document (corruption, faults)")
    runbooks: dict[str, list[RunbookOperation]] = Field(
        default_factory=_default_runbooks,
        description="emergency plans: name -> ordered operations (the seed's three by default)")

    @field_validator("runbooks", mode="before")
    @classmethod
    def _over_the_seeds(cls, v: Any) -> Any:
        # a file that declares its own plan keeps the seed's three (redefine one by name)
        if isinstance(v, Mapping):
            for name in v:
                if not isinstance(name, str) or not re.match(r"^[a-z][a-z0-9_]*$", name):
                    raise ValueError(f"runbook name {name!r} must match [a-z][a-z0-9_]*")
            return {**_default_runbooks(), **v}
        return v

    # Not part of the file: where it came from, for messages and relative paths.
    source: str = Field("<defaults>", exclude=True)
    root: str = Field(".", exclude=True)

    def seed_dict(self) -> dict[str, Any]:
        data = super().seed_dict()
        for key in ("metrics", "alerts", "alertmanager"):
            data["monitoring"].pop(key, None)
        return data

    def path(self, relative: str) -> Path:
        """Resolve a path from the config (e.g. ``stack.knowledge_dir``) against its file."""
        p = Path(relative)
        return p if p.is_absolute() else Path(self.root) / p



# Used when no config file exists, so `pytest --agentverify-env staging` works anywhere.
# Rehearsal environments get rehearsal timings: a 1 s scrape, alerts over 5 s windows (five
# scrapes) that fire after holding 1 s, and Alertmanager notifying within about a second.
_REHEARSAL_MONITORING: dict[str, Any] = {
    "scrape_interval": "1s", "evaluation_interval": "1s",
    "alerts": {"window": "5s", "for": "1s"},
    "alertmanager": {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
}
DEFAULT_ENVIRONMENTS: dict[str, dict[str, Any]] = {
    "dev": {"stack": {"replicas": 2}, "monitoring": _REHEARSAL_MONITORING},
    "staging": {"stack": {"replicas": 3}, "monitoring": _REHEARSAL_MONITORING},
    "production": {"stack": {"replicas": 3}},
}

_TOP_KEYS = set(Config.model_fields) - {"source", "root"}


# --------------------------------------------------------------------------- loading


def deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``overlay`` merged in (mappings key by key, the rest replaced)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
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


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside an annotation: ``Model``, ``Model | None``, ``dict[str, list[Model]]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys a section accepts, for an 'unknown key' message."""
    model: Any = Config
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            if model is Config:
                return []
            continue  # a mapping key or a list index inside a field: same model below
        model = _nested_model(field.annotation)
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
    layers = [(env_vars, "environment"), (overrides, override_source)]

    def validate(name: str, *, with_overrides: bool) -> Config:
        overlay = environments.get(name, {})
        data = deep_merge(raw, overlay)
        data["environment"] = name
        return _apply(data, layers if with_overrides else [], source=source,
                      overlay=(name, overlay))

    # A broken overlay of another environment must fail this run too: CI for staging is
    # where a typo in the production overlay should be caught.
    for other in environments:
        if other != chosen:
            validate(other, with_overrides=False)
    cfg = validate(chosen, with_overrides=True)
    cfg.source = source
    cfg.root = str(file_path.parent.resolve()) if file_path is not None else str(Path.cwd())
    return cfg


def _apply(data: dict[str, Any], layers: list[tuple[Mapping[str, Any], str]], *, source: str,
           overlay: tuple[str, Mapping[str, Any]] | None = None) -> Config:
    """Set every dotted key of every layer on ``data`` (later layers win) and validate.

    The one place overrides are applied: :func:`load_config` (variables, then the
    command line) and :func:`with_overrides` (a fresh stack's changes) both use it, so
    a bad value is one :class:`ConfigError` naming where it came from.
    """
    for keys, _ in layers:
        for key, value in keys.items():
            _set_path(data, key, value)

    def describe(loc: tuple[Any, ...], key: str) -> tuple[str, str]:
        for keys, layer_source in reversed(layers):
            for k in keys:
                if key == k or key.startswith(k + ".") or k.startswith(key + "."):
                    if layer_source == "environment":
                        return layer_source, ENV_PREFIX + k.upper().replace(".", "__")
                    return layer_source, k
        if overlay is not None and _has_path(overlay[1], loc):
            return source, f"environments.{overlay[0]}.{key}"
        return source, key

    return _validate(data, describe_source=describe)


def with_overrides(config: Config, overrides: Mapping[str, Any], *,
                   source: str = "overrides") -> Config:
    """A copy of ``config`` with dotted keys changed (``{"stack.replicas": 1}``).

    Raises:
        ConfigError: a key or value is invalid, naming ``source`` and the key.
    """
    cfg = _apply(config.model_dump(), [(overrides, source)], source=config.source)
    cfg.source, cfg.root = config.source, config.root
    return cfg


def environment_names(path: str | os.PathLike[str] | None = None) -> list[str]:
    """The environments a config file defines (built-in ones when there is no file)."""
    file_path = Path(path) if path is not None else find_config()
    if file_path is None:
        return sorted(DEFAULT_ENVIRONMENTS)
    raw = _read_file(file_path)
    envs = raw.get("environments") or {}
    return sorted(envs) if isinstance(envs, dict) else []
