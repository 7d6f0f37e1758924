"""Alerting as rendered for every environment: promtool and amtool accept each rendering,
the rule tests pass for each (and fail for a threshold no real input reaches), the timings
are the environment's, and a rehearsal never pages anyone but its own receiver."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agentverify.config import environment_names, load_config
from agentverify.errors import ConfigError
from agentverify.monitoring.render import (
    ALERT_NAMES,
    alert_rules,
    alert_rules_test_yaml,
    alert_rules_yaml,
    alert_timing,
    alertmanager_yml,
    check_rendered,
    prometheus_yml,
    run_rule_tests,
)
from agentverify.stack.spec import build_stack_spec

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "agentverify.yaml"
ENVS = environment_names(CONFIG)
KEYS = {"OPENAI_API_KEY": "sk-a", "OPENAI_BACKUP_API_KEY": "sk-b"}


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: apt-get install "
                    f"{'prometheus' if tool == 'promtool' else 'prometheus-alertmanager'}",
                    pytrace=False)
    return path


@pytest.mark.parametrize("env", ENVS)
def test_every_environment_renders_files_promtool_and_amtool_accept(env: str) -> None:
    _need("promtool")
    _need("amtool")
    config = load_config(CONFIG, env)
    assert check_rendered(config, rules=alert_rules_yaml(config),
                          prometheus=prometheus_yml(config),
                          alertmanager=alertmanager_yml(config)) == []
    # the stack's own spec runs the same checks
    spec = build_stack_spec(config, api_keys=KEYS)
    assert spec["prometheus"].files["alert_rules.yml"] == alert_rules_yaml(config)


@pytest.mark.parametrize("env", ENVS)
def test_every_environment_passes_its_rule_tests(env: str) -> None:
    _need("promtool")
    result = run_rule_tests(load_config(CONFIG, env))
    assert result.passed, result.output
    assert result.tests == 2 * len(ALERT_NAMES)


def test_the_shipped_rule_tests_pass_beside_the_shipped_rules(tmp_path: Path) -> None:
    """compose/alert_rules_test.yml is what CI runs with promtool, as users would."""
    promtool = _need("promtool")
    proc = subprocess.run([promtool, "test", "rules", "alert_rules_test.yml"],
                          cwd=REPO / "compose", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize(("override", "alert"), [
    ({"monitoring.alerts.error_ratio": 1.0}, "AgentHighErrorRate"),   # never more than all
    ({"monitoring.alerts.p95_ms": 20_000}, "AgentHighLatency"),      # beyond the 10 s bucket
])
def test_a_threshold_no_real_input_reaches_fails_its_rule_test(override: dict, alert: str) -> None:
    _need("promtool")
    result = run_rule_tests(load_config(CONFIG, "staging", overrides=override))
    assert len(result.failed) == 1, result.output
    assert result.failed[0].startswith(f"{alert}: ")
    assert result.failed[0].endswith("it did not fire")


def test_a_rule_that_fires_below_its_threshold_fails_its_rule_test() -> None:
    _need("promtool")
    config = load_config(CONFIG, "staging")
    rules = alert_rules_yaml(config).replace("sum(rate(requests_total[5s])) > 100",
                                             "sum(rate(requests_total[5s])) > 1")
    result = run_rule_tests(config, rules=rules)
    assert result.failed == ["AgentHighLoad: half the planned request rate (at 16s): it fired"]


def test_a_broken_rendering_is_one_config_error_naming_file_and_tool() -> None:
    _need("promtool")
    _need("amtool")
    bad_window = load_config(CONFIG, "staging", overrides={"monitoring.alerts.window": "0s"})
    with pytest.raises(ConfigError, match=r"rendered alert_rules\.yml: promtool check rules: "
                                          r".*duration must be greater than 0"):
        build_stack_spec(bad_window, api_keys=KEYS)
    bad_route = load_config(CONFIG, "staging",
                            overrides={"monitoring.alertmanager.group_interval": "0s"})
    with pytest.raises(ConfigError, match=r"alertmanager\.yml: amtool check-config: .*"
                                          r"group_interval cannot be zero"):
        build_stack_spec(bad_route, api_keys=KEYS)


def test_rules_take_window_for_and_thresholds_from_the_environment() -> None:
    staging = {r.name: r for r in alert_rules(load_config(CONFIG, "staging"))}
    prod = {r.name: r for r in alert_rules(load_config(CONFIG, "production"))}
    assert staging["AgentHighLoad"].expr == "sum(rate(requests_total[5s])) > 100"
    assert staging["AgentHighLoad"].for_ == "1s"
    assert "[5m]" in prod["AgentHighErrorRate"].expr and prod["AgentHighErrorRate"].for_ == "1m"
    assert staging["AgentHighLatency"].threshold == 1.0      # slo.p95_ms 1000
    assert prod["AgentHighLatency"].threshold == 0.5         # production's slo.p95_ms 500
    assert staging["AgentHighErrorRate"].threshold == 0.01   # slo.error_ratio
    # a 429 is the rate limit working: client errors never count as the service failing
    assert 'error!="rate_limited",error!="invalid_request"' in staging["AgentHighErrorRate"].value
    overridden = load_config(CONFIG, "staging", overrides={"monitoring.alerts.for": "7s",
                                                           "monitoring.alerts.error_ratio": 0.2})
    rule = next(r for r in alert_rules(overridden) if r.name == "AgentHighErrorRate")
    assert (rule.for_, rule.threshold) == ("7s", 0.2)
    assert {r.labels.get("runbook") for r in staging.values()} == \
        {None, "api_error", "high_load", "data_corruption"}


def test_metric_names_come_from_one_place() -> None:
    """Renaming the agent's metrics in monitoring.metrics renames them in every rule and
    in the rule tests, which still pass: nothing else spells a metric name."""
    _need("promtool")
    config = load_config(CONFIG, "staging", overrides={
        "monitoring.metrics.requests.name": "http_requests_total",
        "monitoring.metrics.requests.selector": {"route": "/ask"},
        "monitoring.metrics.errors.name": "http_errors_total",
        "monitoring.metrics.errors.label": "reason",
        "monitoring.metrics.latency.name": "http_latency_seconds"})
    rules = alert_rules_yaml(config)
    assert "requests_total[" not in rules.replace('http_requests_total{route="/ask"}[', "")
    assert "http_errors_total" in rules and "http_latency_seconds_bucket" in rules
    assert 'reason!="rate_limited"' in rules
    tests = alert_rules_test_yaml(config)
    assert 'http_requests_total{route="/ask", type="chat"}' in tests
    assert run_rule_tests(config).passed


def test_alertmanager_timings_are_the_environments_and_resolved_is_sent() -> None:
    staging = yaml.safe_load(alertmanager_yml(load_config(CONFIG, "staging")))
    prod = yaml.safe_load(alertmanager_yml(load_config(CONFIG, "production")))
    assert {k: staging["route"][k] for k in ("group_wait", "group_interval",
                                             "repeat_interval")} == \
        {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"}
    assert {k: prod["route"][k] for k in ("group_wait", "group_interval", "repeat_interval")} \
        == {"group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h"}
    (hook,) = staging["receivers"][0]["webhook_configs"]
    assert hook == {"url": "http://${addr:receiver}/alerts", "send_resolved": True}
    timing = alert_timing(load_config(CONFIG, "staging"))
    assert (timing.window_s, timing.for_s, timing.evaluation_s, timing.group_wait_s) == \
        (5.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(("url", "backend", "used"), [
    ("http://127.0.0.1:9999/hook", "local", True),
    ("http://localhost:9999/hook", "local", True),
    ("http://127.0.0.1:9999/hook", "docker", False),   # 127.0.0.1 is the container itself
    ("https://hooks.slack.com/services/T/B/X", "local", False),  # never a real team
    ("http://10.0.0.5/hook", "local", False),
])
def test_the_seed_webhook_is_used_only_on_this_machines_loopback(url: str, backend: str,
                                                                 used: bool) -> None:
    config = load_config(CONFIG, "staging", overrides={"monitoring.alert_webhook": url})
    hooks = yaml.safe_load(alertmanager_yml(config, backend=backend))["receivers"][0][
        "webhook_configs"]
    assert [h["url"] for h in hooks] == ["http://${addr:receiver}/alerts"] + ([url] if used else [])


def test_the_timings_bound_the_drills_waits() -> None:
    staging = alert_timing(load_config(CONFIG, "staging"))
    prod = alert_timing(load_config(CONFIG, "production"))
    # a condition well over its threshold fires within a window, the hold and a few
    # evaluations; production's windows make that minutes
    assert 15 <= staging.alert_timeout_s <= 40
    assert prod.alert_timeout_s >= 300 + 60
    assert staging.resolve_timeout_s < prod.resolve_timeout_s
    assert staging.notify_after_firing_s == pytest.approx(3.0)
