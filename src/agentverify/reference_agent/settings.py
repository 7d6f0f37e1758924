"""Typed settings of the reference agent: YAML file, then environment overrides.

Precedence, lowest first::

    built-in defaults < AGENT_CONFIG file < environment variables

The file is the reference deployment's ``config.yaml``; unknown keys are ignored (the
agent shares the file with other tools) and missing sections take their defaults. The
environment is read inside :func:`load_settings`, never at import, so two apps built in
one process with different environments do not collide.

Example:
    >>> s = load_settings(environ={"AGENT_VERSION": "v2", "REDIS_URL": "redis://h:1/0"})
    >>> (s.version, s.cache.url)
    ('v2', 'redis://h:1/0')

The API keys are :class:`pydantic.SecretStr`: their ``repr`` and ``str`` are masked, so
neither a log line nor an exception that renders the settings can leak them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SecretStr, ValidationError

from agentverify.errors import ConfigError
from agentverify.seed import (
    BackupModelSection,
    ModelSection,
    SeedConfig,
    known_keys,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "AgentConfigError",
    "AgentSettings",
    "BackupModelSettings",
    "ModelSettings",
    "load_settings",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"


class AgentConfigError(ConfigError):
    """The agent's configuration file or an override variable is invalid.

    The message names the source (file path or variable), the key and what was expected.
    """


class BackupModelSettings(BackupModelSection):
    """The backup LLM API, with its key (from the variable ``api_key_env`` names)."""

    api_key: SecretStr | None = Field(default=None, exclude=True)


class ModelSettings(ModelSection):
    """The seed's ``model`` section, with the key (only ever from the environment).

    Example:
        >>> ModelSettings(model_name="gpt-4", api_key="sk-123")  # doctest: +ELLIPSIS
        ModelSettings(provider='openai', model_name='gpt-4', ...api_key=SecretStr('**********')...)
    """

    backup: BackupModelSettings = Field(default_factory=BackupModelSettings)
    api_key: SecretStr | None = Field(default=None, exclude=True)


class AgentSettings(SeedConfig):
    """Everything one agent replica needs, resolved once at start-up: the seed-format
    file (one schema, :mod:`agentverify.seed`) plus what only an agent knows.

    The fault knobs (``fail_health``, ``error_rate``, ``latency_ms``, ``health_ignores``,
    ``cache_required``, ``cache_without_ttl``, ``drop_max_tokens``) only come from the
    environment; rehearsals set them on a version to prove the gates catch it.
    """

    model: ModelSettings = Field(default_factory=ModelSettings)
    version: str = "v1"
    replica: str = "0"
    fail_health: bool = False
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    latency_ms: float = Field(default=0.0, ge=0.0)
    #: dependencies /health does not check (a defect a rehearsal must catch)
    health_ignores: list[str] = Field(default_factory=list)
    #: /chat fails when Redis fails (a defect: the cache is only an optimisation)
    cache_required: bool = False
    #: answers are cached without a TTL (a defect: the cache grows until Redis evicts or dies)
    cache_without_ttl: bool = False
    #: chat completions are asked for without ``max_tokens`` (a defect: long, costly answers)
    drop_max_tokens: bool = False
    #: the request log (one JSON line per request; SIGHUP reopens it); None: not written
    log_file: str | None = None

    @property
    def base_url(self) -> str:
        """The primary API's base URL (the local stub's when the file names none)."""
        return self.model.base_url or DEFAULT_BASE_URL

    @property
    def backup_base_url(self) -> str:
        """The backup API's base URL (the primary's when the backup names none)."""
        return self.model.backup.base_url or self.base_url


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AgentConfigError(
            f"{path}: cannot read the config file ({exc.strerror or exc})"
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise AgentConfigError(f"{path}:{where} invalid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AgentConfigError(
            f"{path}: expected a mapping at the top level, got {type(data).__name__}"
        )
    return data


def _section(data: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    value = data.get(name)
    if value is None:
        value = {}
        data[name] = value
    if not isinstance(value, dict):
        raise AgentConfigError(
            f"{source}: {name}: expected a mapping, got {type(value).__name__}"
        )
    return value


def _float_env(environ: Mapping[str, str], name: str) -> float:
    raw = environ[name]
    try:
        return float(raw)
    except ValueError:
        raise AgentConfigError(f"{name}: expected a number, got {raw!r}") from None


def _apply_environment(
    data: dict[str, Any], environ: Mapping[str, str], source: str
) -> dict[str, str]:
    """Overlay the documented environment variables onto the raw file data.

    Returns:
        ``{"section.key": VARIABLE}`` for every value taken from the environment, so a
        validation error can name the variable instead of the file.
    """
    origin: dict[str, str] = {}

    def put(target: dict[str, Any], key: str, loc: str, var: str) -> None:
        target[key] = environ[var]
        origin[loc] = var

    model = _section(data, "model", source)
    backup = model.get("backup")
    if backup is None:
        backup = model["backup"] = {}
    if not isinstance(backup, dict):
        raise AgentConfigError(
            f"{source}: model.backup: expected a mapping, got {type(backup).__name__}"
        )
    vector_store = _section(data, "vector_store", source)
    cache = _section(data, "cache", source)

    if "REDIS_URL" in environ:
        put(cache, "url", "cache.url", "REDIS_URL")
    if "MILVUS_HOST" in environ:
        put(vector_store, "host", "vector_store.host", "MILVUS_HOST")
    if "MILVUS_PORT" in environ:
        put(vector_store, "port", "vector_store.port", "MILVUS_PORT")
    if "OPENAI_BASE_URL" in environ:
        put(model, "base_url", "model.base_url", "OPENAI_BASE_URL")
    if "OPENAI_BACKUP_BASE_URL" in environ:
        put(backup, "base_url", "model.backup.base_url", "OPENAI_BACKUP_BASE_URL")

    # Keys only ever come from the environment: a key written in the file is dropped.
    model.pop("api_key", None)
    backup.pop("api_key", None)
    key_env = str(model.get("api_key_env") or "OPENAI_API_KEY")
    backup_key_env = str(backup.get("api_key_env") or "OPENAI_BACKUP_API_KEY")
    if environ.get(key_env):
        model["api_key"] = environ[key_env]
    if environ.get(backup_key_env):
        backup["api_key"] = environ[backup_key_env]

    if "AGENT_VERSION" in environ:
        put(data, "version", "version", "AGENT_VERSION")
    if "AGENT_REPLICA" in environ:
        put(data, "replica", "replica", "AGENT_REPLICA")
    if "AGENT_FAIL_HEALTH" in environ:
        data["fail_health"] = environ["AGENT_FAIL_HEALTH"].strip().lower() in {
            "1",
            "true",
            "yes",
            "on",
        }
    if environ.get("AGENT_ERROR_RATE", "").strip():
        data["error_rate"] = _float_env(environ, "AGENT_ERROR_RATE")
        origin["error_rate"] = "AGENT_ERROR_RATE"
    if environ.get("AGENT_HEALTH_IGNORE", "").strip():
        data["health_ignores"] = [d.strip() for d in environ["AGENT_HEALTH_IGNORE"].split(",")
                                  if d.strip()]
    if "AGENT_CACHE_REQUIRED" in environ:
        data["cache_required"] = environ["AGENT_CACHE_REQUIRED"].strip().lower() in {
            "1", "true", "yes", "on"}
    for var, key in (("AGENT_CACHE_NO_TTL", "cache_without_ttl"),
                     ("AGENT_DROP_MAX_TOKENS", "drop_max_tokens")):
        if var in environ:
            data[key] = environ[var].strip().lower() in {"1", "true", "yes", "on"}
    if environ.get("AGENT_LOG_FILE", "").strip():
        put(data, "log_file", "log_file", "AGENT_LOG_FILE")
    if environ.get("AGENT_LATENCY_MS", "").strip():
        data["latency_ms"] = _float_env(environ, "AGENT_LATENCY_MS")
        origin["latency_ms"] = "AGENT_LATENCY_MS"
    return origin


def _validation_message(exc: ValidationError, source: str, origin: dict[str, str]) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if loc in origin:
        source = f"{origin[loc]} (environment)"
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {loc}: {first['msg']}{suffix}"


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AgentSettings:
    """Resolve the agent's settings from the YAML file and the environment.

    Args:
        path: The YAML file; ``None`` means ``environ["AGENT_CONFIG"]``, and no file at
            all means built-in defaults.
        environ: The environment to read (default ``os.environ``).

    Returns:
        The validated settings.

    Raises:
        AgentConfigError: The file cannot be read or a value is invalid; the message
            names the file or variable and the key. It never contains an API key.

    Example:
        >>> load_settings(environ={}).model.model_name
        'gpt-4'
    """
    env = os.environ if environ is None else environ
    if path is None and env.get("AGENT_CONFIG"):
        path = env["AGENT_CONFIG"]
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        data = _read_file(Path(path))
    # the file is shared with other tools: what the schema does not know is not ours
    data = known_keys(AgentSettings, data)
    origin = _apply_environment(data, env, source)
    try:
        return AgentSettings.model_validate(data)
    except ValidationError as exc:
        raise AgentConfigError(_validation_message(exc, source, origin)) from None
