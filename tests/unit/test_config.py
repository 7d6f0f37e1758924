"""Config loading: precedence, overlays, and one clear line for every kind of bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agentverify.config import Config, load_config, parse_override
from agentverify.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agentverify.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BASE = """
    environment: dev
    model: {model_name: gpt-4, max_tokens: 2000}
    stack: {replicas: 3}
    environments:
      dev: {stack: {replicas: 2}}
      staging: {stack: {replicas: 3}, model: {max_tokens: 500}}
      production: {log_level: WARNING}
"""


def test_shipped_config_is_valid_for_every_environment() -> None:
    for env in ("dev", "staging", "production"):
        cfg = load_config(REPO / "agentverify.yaml", env, environ={})
        assert cfg.environment == env
    assert load_config(REPO / "agentverify.yaml", "staging", environ={}).stack.replicas == 3
    assert load_config(REPO / "agentverify.yaml", "dev", environ={}).stack.replicas == 2


def test_overlay_is_deep_merged_over_the_base(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE), "staging", environ={})
    assert cfg.model.max_tokens == 500
    assert cfg.model.model_name == "gpt-4"  # untouched sibling key survives the overlay
    assert cfg.stack.replicas == 3


def test_precedence_defaults_file_overlay_env_vars_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    assert load_config(path, "dev", environ={}).stack.replicas == 2
    env = {"AGENTVERIFY_STACK__REPLICAS": "4"}
    assert load_config(path, "dev", environ=env).stack.replicas == 4
    cfg = load_config(path, "dev", environ=env, overrides={"stack.replicas": 5})
    assert cfg.stack.replicas == 5


def test_environment_chosen_from_variable_then_file(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    assert load_config(path, environ={}).environment == "dev"
    assert load_config(path, environ={"AGENTVERIFY_ENV": "production"}).log_level == "WARNING"


def test_defaults_without_a_file_know_the_three_environments(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None, "staging", environ={}).monitoring.scrape_interval == "1s"
    with pytest.raises(ConfigError, match="unknown environment 'qa'"):
        load_config(None, "qa", environ={})


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        (BASE, "qa",
         "agentverify.yaml: environments: unknown environment 'qa'; expected one of: "
         "dev, production, staging"),
        ("stack: {replicas: three}\n", None,
         "agentverify.yaml: stack.replicas: expected an integer, got 'three'"),
        ("stack: {replicas: 0}\n", None,
         "agentverify.yaml: stack.replicas: expected a value >= 1, got 0"),
        ("stack: {replicaz: 3}\n", None,
         "agentverify.yaml: stack.replicaz: unknown key; expected one of: agent, alertmanager"),
        ("model: {temperature: hot}\n", None,
         "agentverify.yaml: model.temperature: expected a number, got 'hot'"),
        ("stack: {backend: podman}\n", None,
         "agentverify.yaml: stack.backend: expected one of auto, docker, local, got 'podman'"),
        ("monitoring: {scrape_interval: fast}\n", None,
         "agentverify.yaml: monitoring.scrape_interval: expected a Prometheus duration"),
        ("model: {api_key: sk-123}\n", None, "agentverify.yaml: model.api_key: unknown key"),
        ("environments:\n  dev: {stack: {replicas: -1}}\n", "dev",
         "agentverify.yaml: environments.dev.stack.replicas: expected a value >= 1, got -1"),
        ("- a\n- b\n", None, "agentverify.yaml: expected a mapping at the top level, got list"),
        ("stack: {replicas: [1\n", None, "agentverify.yaml: line 2:"),
    ],
)
def test_bad_input_is_one_line_naming_file_key_and_expectation(tmp_path: Path, text: str,
                                                               env: str | None,
                                                               expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env, environ={})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(tmp_path)), message
    assert expected in message.replace(str(tmp_path) + "/", ""), message


def test_a_broken_overlay_of_another_environment_fails_this_run(tmp_path: Path) -> None:
    path = write(tmp_path, """
        environments:
          staging: {}
          production: {slo: {p95_ms: fast}}
    """)
    with pytest.raises(ConfigError, match=r"environments\.production\.slo\.p95_ms"):
        load_config(path, "staging", environ={})


def test_bad_environment_variable_and_override_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"^environment: AGENTVERIFY_STACK__REPLICAS: "):
        load_config(path, "dev", environ={"AGENTVERIFY_STACK__REPLICAS": "many"})
    with pytest.raises(ConfigError, match=r"^command line: stack\.replicas: "):
        load_config(path, "dev", environ={}, overrides={"stack.replicas": "many"})


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found$"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("stack.replicas=5") == ("stack.replicas", 5)
    assert parse_override("rate_limit.enabled=true") == ("rate_limit.enabled", True)
    assert parse_override("model.model_name=gpt-4o") == ("model.model_name", "gpt-4o")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("stack.replicas")


def test_seed_dict_has_the_seed_sections_and_no_secret() -> None:
    data = Config().seed_dict()
    assert {"model", "vector_store", "cache", "monitoring"} <= set(data)
    assert "api_key" not in str(data).replace("api_key_env", "")


def test_cli_config_error_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "stack: {replicas: three}\n")
    proc = subprocess.run([sys.executable, "-m", "agentverify.cli", "config", "--config",
                           str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "stack.replicas: expected an integer, got 'three'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_unknown_environment_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "agentverify.cli", "config", "--config",
                           str(REPO / "agentverify.yaml"), "--env", "qa"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown environment 'qa'; expected one of: dev, gameday, production, staging" in proc.stderr


@pytest.mark.parametrize(("child_code", "expected"), [(1, 1), (2, 130), (-15, 130), (-2, 130),
                                                      (-9, 130), (-11, 3)])
def test_agentverify_run_exits_with_what_its_pytest_child_ended_with(
        child_code: int, expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pytest child killed by a signal before it could say so itself (a SIGTERM before
    its handler was set, an interrupt in its last hooks) is "interrupted", not "the stack
    could not be brought up"."""
    import signal

    from agentverify import cli

    class Child:
        def __init__(self, argv: list[str]) -> None:
            assert "--assert=plain" in argv

        def wait(self) -> int:
            return child_code

    monkeypatch.setattr("subprocess.Popen", Child)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        scenarios = Path(__file__).resolve().parents[2] / "scenarios"
        assert cli.main(["run", "--env", "dev", str(scenarios)]) == expected
    finally:
        signal.signal(signal.SIGTERM, previous)
