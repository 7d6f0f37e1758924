"""Settings of the support agent: environment variables plus the YAML file ``SUPPORT_CONFIG``.

Everything is read once, at start-up: to change the model or the rate limit, edit the file
and restart the process. Variables:

=====================  =========================================  ==========================
variable               meaning                                    default
=====================  =========================================  ==========================
``OPENAI_BASE_URL``    OpenAI-compatible API                      the SDK's (api.openai.com)
``OPENAI_API_KEY``     its key (required)                         -
``REDIS_URL``          answer cache + rate-limit buckets          ``redis://127.0.0.1:6379/0``
``MILVUS_URI``         knowledge base                             ``http://127.0.0.1:19530``
``HOST`` / ``PORT``    where the API listens                      ``127.0.0.1`` / ``8000``
``APP_VERSION``        the build, in ``X-App-Version``            the package version
``INSTANCE_ID``        this replica, in ``X-Served-By``           ``<hostname>:<PORT>``
``SUPPORT_CONFIG``     the YAML file below                        none: built-in defaults
``SUPPORT_LOG_FILE``   request log file (else stdout)             none
``SUPPORT_AGENT_FAULT``  feature flag: ``unhealthy`` | ``errors``  none
=====================  =========================================  ==========================

The file has the sections ``model``, ``cache``, ``vector_store`` and ``rate_limit``; other
sections and keys are ignored, because the same file is usually shared with other tools.

Example:
    >>> s = load_settings({"OPENAI_API_KEY": "sk-x", "APP_VERSION": "v2"})
    >>> (s.version, s.model.model_name, s.vector_store.collection)
    ('v2', 'gpt-4o-mini', 'support_kb')
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from support_agent import __version__

__all__ = [
    "CacheConfig",
    "ConfigError",
    "FAULTS",
    "ModelConfig",
    "RateLimitConfig",
    "Settings",
    "VectorStoreConfig",
    "load_settings",
]

#: Values of ``SUPPORT_AGENT_FAULT``: ``unhealthy`` makes /healthz always 503, ``errors``
#: answers every other /v1/ask with 500 (to rehearse a broken release).
FAULTS = ("unhealthy", "errors")


class ConfigError(Exception):
    """The config file or a variable is invalid; the message is one line naming it."""


class _Section(BaseModel):
    # Unknown keys are ignored: the file is shared with deployment tooling.
    model_config = ConfigDict(extra="ignore", frozen=True)


class ModelConfig(_Section):
    """Which chat model answers, and how the SDK calls it."""

    model_name: str = Field("gpt-4o-mini", min_length=1)
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=1)
    retry_count: int = Field(3, ge=0, le=20, description="the SDK's max_retries")
    timeout: float = Field(30.0, gt=0, description="seconds per LLM call attempt")


class CacheConfig(_Section):
    """How long an answer stays in Redis."""

    ttl: int = Field(3600, ge=1, description="seconds")
    timeout: float = Field(1.0, gt=0, description="seconds per Redis call; a slow cache is a miss")


class VectorStoreConfig(_Section):
    """The Milvus collection of the knowledge base and its embeddings."""

    collection: str = Field("support_kb", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    dim: int = Field(64, ge=2, le=4096)
    top_k: int = Field(3, ge=1, le=20)
    embedding_model: str = Field("text-embedding-3-small", min_length=1)
    timeout: float = Field(5.0, gt=0, description="seconds per Milvus call")


class RateLimitConfig(_Section):
    """A token bucket per client, shared by every replica through Redis."""

    enabled: bool = False
    requests_per_second: float = Field(10.0, gt=0)
    burst: int = Field(20, ge=1)


class _File(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    vector_store: VectorStoreConfig = Field(default_factory=VectorStoreConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)


class Settings(_Section):
    """Everything one process needs, resolved once by :func:`load_settings`.

    Example:
        >>> load_settings({"OPENAI_API_KEY": "sk-secret"}).api_key
        SecretStr('**********')
    """

    model: ModelConfig = Field(default_factory=ModelConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    vector_store: VectorStoreConfig = Field(default_factory=VectorStoreConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    openai_base_url: str | None = None
    api_key: SecretStr
    redis_url: str = "redis://127.0.0.1:6379/0"
    milvus_uri: str = "http://127.0.0.1:19530"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    version: str = __version__
    instance: str = ""
    log_file: str | None = None
    fault: Literal["unhealthy", "errors"] | None = None
    config_file: str | None = None


#: Settings field -> the variable it comes from, to name it in an error.
_VARIABLES = {"redis_url": "REDIS_URL", "milvus_uri": "MILVUS_URI", "host": "HOST", "port": "PORT",
              "version": "APP_VERSION", "instance": "INSTANCE_ID", "openai_base_url": "OPENAI_BASE_URL"}


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        raise ConfigError(f"{path}:{where} not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _one_line(exc: ValidationError, source: str) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    key = ".".join(str(part) for part in first["loc"])
    return f"{source}: {key}: {first['msg']}"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the environment and the ``SUPPORT_CONFIG`` file into :class:`Settings`.

    Args:
        environ: The variables to read (default ``os.environ``).

    Raises:
        ConfigError: One line naming the file and key, or the variable, that is wrong.
            It never contains the API key.

    Example:
        >>> load_settings({"OPENAI_API_KEY": "k", "PORT": "9001"}).instance.endswith(":9001")
        True
    """
    env = os.environ if environ is None else environ
    path = env.get("SUPPORT_CONFIG") or None
    raw = _read_yaml(path) if path else {}
    try:
        sections = _File.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, path or "config")) from None

    key = env.get("OPENAI_API_KEY", "")
    if not key:
        raise ConfigError("OPENAI_API_KEY: not set (the key of the OpenAI-compatible API)")
    fault = env.get("SUPPORT_AGENT_FAULT", "").strip().lower() or None
    if fault is not None and fault not in FAULTS:
        raise ConfigError(f"SUPPORT_AGENT_FAULT: expected one of {', '.join(FAULTS)} or unset, got {fault!r}")
    port_text = env.get("PORT", "8000")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"PORT: expected a port number, got {port_text!r}") from None

    values: dict[str, Any] = {
        "model": sections.model,
        "cache": sections.cache,
        "vector_store": sections.vector_store,
        "rate_limit": sections.rate_limit,
        "openai_base_url": env.get("OPENAI_BASE_URL") or None,
        "api_key": key,
        "port": port,
        "fault": fault,
        "config_file": path,
        "log_file": env.get("SUPPORT_LOG_FILE") or None,
    }
    for name, var in (("redis_url", "REDIS_URL"), ("milvus_uri", "MILVUS_URI"), ("host", "HOST"),
                      ("version", "APP_VERSION"), ("instance", "INSTANCE_ID")):
        if env.get(var):
            values[name] = env[var]
    values.setdefault("instance", f"{socket.gethostname()}:{port}")
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        field = str(exc.errors(include_url=False)[0]["loc"][0])
        message = exc.errors(include_url=False, include_input=False)[0]["msg"]
        raise ConfigError(f"{_VARIABLES.get(field, field)}: {message}") from None
