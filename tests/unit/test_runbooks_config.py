"""runbooks: in config: the seed's three plans by default, the user's own beside them, and
every mistake one line naming the file, the key and what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentverify.config import DEFAULT_RUNBOOKS, RunbookOperation, load_config, with_overrides
from agentverify.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _load(tmp_path: Path, text: str):
    path = tmp_path / "agentverify.yaml"
    path.write_text(text)
    return load_config(path, "dev")


def _plans(config) -> dict[str, list[str]]:
    return {name: [op.describe() for op in ops] for name, ops in config.runbooks.items()}


def test_the_defaults_are_the_seeds_three_plans(tmp_path: Path) -> None:
    assert DEFAULT_RUNBOOKS == ("high_load", "api_error", "data_corruption")
    assert _plans(_load(tmp_path, "log_level: INFO\n")) == {
        "high_load": ["scale 5", "rate_limit on", "notify"],
        "api_error": ["switch_llm backup", "clear_cache", "restart"],
        "data_corruption": ["stop_agents", "restore_backup redis+milvus", "restart"],
    }


def test_the_shipped_config_writes_them_out(tmp_path: Path) -> None:
    plans = _plans(load_config(REPO / "agentverify.yaml", "staging"))
    assert plans["high_load"] == ["scale 5", "rate_limit on 5/s burst 10", "notify"]
    assert plans["api_error"] == ["switch_llm backup", "clear_cache", "restart"]
    assert plans["data_corruption"] == ["stop_agents", "restore_backup redis+milvus", "restart"]


def test_a_users_runbook_sits_beside_the_seeds_and_may_replace_one(tmp_path: Path) -> None:
    config = _load(tmp_path, """
runbooks:
  cache_storm:
    - clear_cache
    - restart:
    - notify: {text: "cache cleared on {env} after {alert}"}
  api_error:
    - switch_llm: {use: backup}
""")
    plans = _plans(config)
    assert plans["cache_storm"] == ["clear_cache", "restart", "notify"]
    assert plans["api_error"] == ["switch_llm backup"]
    assert plans["high_load"][0] == "scale 5"
    # a copy with overrides (a fresh stack's config) keeps them, operation for operation
    again = with_overrides(config, {"stack.replicas": 1})
    assert _plans(again) == plans


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("runbooks:\n  high_load:\n    - scael: {replicas: 5}\n",
     "runbooks.high_load.0.scael: unknown key; expected one of: clear_cache, notify, "
     "rate_limit, restart, restore_backup, scale, stop_agents, switch_llm"),
    ("runbooks:\n  high_load:\n    - scale: {replicas: 50}\n",
     "runbooks.high_load.0.scale.replicas: expected 1 to 32 replicas or 'baseline', got 50"),
    ("runbooks:\n  high_load:\n    - rate_limit: {burst: 0}\n",
     "runbooks.high_load.0.rate_limit.burst: expected a value >= 1, got 0"),
    ("runbooks:\n  x:\n    - switch_llm: {use: secondary}\n",
     "runbooks.x.0.switch_llm.use: expected one of 'primary' or 'backup', got 'secondary'"),
    ("runbooks:\n  x:\n    - restore_backup: {parts: [redis, disk]}\n",
     "runbooks.x.0.restore_backup.parts.1: expected one of 'redis' or 'milvus', got 'disk'"),
    ("runbooks:\n  x:\n    - notify: {text: 'paged {oncall}'}\n",
     "runbooks.x.0.notify.text: unknown placeholder {oncall}"),
    ("runbooks:\n  x:\n    - {scale: {replicas: 5}, clear_cache: {}}\n",
     "runbooks.x.0: an operation has exactly one key (its name), e.g. '- scale: {replicas: "
     "5}'; got ['scale', 'clear_cache']"),
    ("runbooks:\n  High-Load: []\n",
     "runbooks: runbook name 'High-Load' must match [a-z][a-z0-9_]*"),
])
def test_a_bad_runbook_is_one_line_naming_the_key(tmp_path: Path, yaml_text: str,
                                                  message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, yaml_text)
    text = str(info.value)
    assert text.startswith(f"{tmp_path / 'agentverify.yaml'}: {message}"), text
    assert "\n" not in text


def test_operations_read_their_shorthands_and_describe_themselves() -> None:
    assert RunbookOperation.model_validate("stop_agents").name == "stop_agents"
    assert RunbookOperation.model_validate({"restart": None}).name == "restart"
    assert RunbookOperation.model_validate({"scale": {"replicas": "baseline"}}).describe() == \
        "scale baseline"
    assert RunbookOperation.model_validate({"rate_limit": {"enabled": False}}).describe() == \
        "rate_limit off"
    assert RunbookOperation.model_validate(
        {"restore_backup": {"parts": ["redis"]}}).describe() == "restore_backup redis"


def test_monitoring_alerts_read_and_write_for_as_prometheus_spells_it(tmp_path: Path) -> None:
    config = _load(tmp_path, "monitoring:\n  alerts: {window: 30s, for: 10s, load_rps: 50}\n")
    assert (config.monitoring.alerts.window, config.monitoring.alerts.for_) == ("30s", "10s")
    assert config.model_dump()["monitoring"]["alerts"]["for"] == "10s"
    assert with_overrides(config, {"monitoring.alerts.for": "3s"}).monitoring.alerts.for_ == "3s"
    with pytest.raises(ConfigError, match=r"monitoring\.alerts\.for: expected a Prometheus "
                                          r"duration such as '1s' or '15s'"):
        _load(tmp_path, "monitoring:\n  alerts: {for: soon}\n")
    with pytest.raises(ConfigError, match=r"monitoring\.alertmanager\.group_wait: expected a "
                                          r"Prometheus duration"):
        _load(tmp_path, "monitoring:\n  alertmanager: {group_wait: 1 second}\n")
