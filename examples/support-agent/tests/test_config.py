"""Settings: the seed-format file, the environment, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from support_agent.config import ConfigError, load_settings

KEY = {"OPENAI_API_KEY": "sk-very-secret"}

SEED_FORMAT = """\
environment: staging
log_level: INFO
model:
  provider: openai
  model_name: gpt-4
  temperature: 0.7
  max_tokens: 2000
  retry_count: 5
  timeout: 12
  base_url: http://ignored.example/v1
  backup: {provider: openai, model_name: gpt-3.5-turbo}
vector_store: {type: milvus, host: milvus.internal, port: 19530, collection: kb_orbit, dim: 128, top_k: 4}
cache: {type: redis, url: "redis://redis.internal:6379", ttl: 90}
monitoring: {prometheus_port: 9090, grafana_port: 3000}
rate_limit: {enabled: true, requests_per_second: 2.5, burst: 7}
cost: {prices: {}}
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults_without_a_file() -> None:
    s = load_settings(KEY)
    assert (s.model.model_name, s.model.max_tokens, s.model.retry_count) == ("gpt-4o-mini", 512, 3)
    assert (s.vector_store.collection, s.vector_store.dim, s.cache.ttl) == ("support_kb", 64, 3600)
    assert (s.host, s.port, s.redis_url, s.milvus_uri) == (
        "127.0.0.1", 8000, "redis://127.0.0.1:6379/0", "http://127.0.0.1:19530")
    assert s.rate_limit.enabled is False and s.fault is None and s.log_file is None
    assert s.openai_base_url is None


def test_seed_format_file_is_read_and_unknown_keys_are_ignored(tmp_path: Path) -> None:
    s = load_settings({**KEY, "SUPPORT_CONFIG": write(tmp_path, SEED_FORMAT)})
    assert (s.model.model_name, s.model.temperature, s.model.max_tokens) == ("gpt-4", 0.7, 2000)
    assert (s.model.retry_count, s.model.timeout) == (5, 12.0)
    assert (s.vector_store.collection, s.vector_store.dim, s.vector_store.top_k) == ("kb_orbit", 128, 4)
    assert s.cache.ttl == 90
    assert (s.rate_limit.enabled, s.rate_limit.requests_per_second, s.rate_limit.burst) == (True, 2.5, 7)
    # Addresses come from the environment only, never from the shared file.
    assert s.redis_url == "redis://127.0.0.1:6379/0" and s.openai_base_url is None


def test_environment_variables() -> None:
    s = load_settings({**KEY, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "REDIS_URL": "redis://r:1/2",
                       "MILVUS_URI": "http://m:3", "HOST": "0.0.0.0", "PORT": "8123", "APP_VERSION": "v9",
                       "INSTANCE_ID": "agent-2", "SUPPORT_LOG_FILE": "/tmp/x.log",
                       "SUPPORT_AGENT_FAULT": "Errors"})
    assert (s.openai_base_url, s.redis_url, s.milvus_uri) == ("http://127.0.0.1:9/v1", "redis://r:1/2", "http://m:3")
    assert (s.host, s.port, s.version, s.instance, s.log_file, s.fault) == (
        "0.0.0.0", 8123, "v9", "agent-2", "/tmp/x.log", "errors")


def test_instance_defaults_to_host_and_port() -> None:
    assert load_settings({**KEY, "PORT": "8444"}).instance.endswith(":8444")


def test_the_key_never_shows() -> None:
    s = load_settings(KEY)
    assert "sk-very-secret" not in repr(s) and "sk-very-secret" not in str(s)
    assert s.api_key.get_secret_value() == "sk-very-secret"


@pytest.mark.parametrize(("text", "expected"), [
    ("model: {max_tokens: 0}\n", "model.max_tokens: Input should be greater than or equal to 1"),
    ("vector_store: {collection: 'bad name'}\n", "vector_store.collection: String should match pattern"),
    ("rate_limit: {enabled: maybe}\n", "rate_limit.enabled: Input should be a valid boolean"),
    ("cache: 5\n", "cache: Input should be a valid dictionary"),
    ("- a\n- b\n", "expected a mapping of sections, got list"),
    ("model: {max_tokens: [1,\n", "line 2: not valid YAML"),
])
def test_bad_file_is_one_line_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings({**KEY, "SUPPORT_CONFIG": path})
    message = str(info.value)
    assert message.startswith(path + ":") and expected in message and "\n" not in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the config file"):
        load_settings({**KEY, "SUPPORT_CONFIG": str(tmp_path / "nope.yaml")})


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "OPENAI_API_KEY: not set"),
    ({**KEY, "SUPPORT_AGENT_FAULT": "slow"}, "SUPPORT_AGENT_FAULT: expected one of unhealthy, errors or unset"),
    ({**KEY, "PORT": "http"}, "PORT: expected a port number, got 'http'"),
    ({**KEY, "PORT": "70000"}, "PORT: Input should be less than or equal to 65535"),
])
def test_bad_variable_is_one_line_naming_it(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert str(info.value).startswith(expected) and "sk-very-secret" not in str(info.value)


def test_the_shipped_config_file_loads() -> None:
    path = Path(__file__).resolve().parents[1] / "config.yaml"
    s = load_settings({**KEY, "SUPPORT_CONFIG": str(path)})
    assert (s.model.model_name, s.vector_store.collection, s.vector_store.dim) == ("gpt-4o-mini", "support_kb", 64)
    assert s.rate_limit.enabled is False
