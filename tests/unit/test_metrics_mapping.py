"""monitoring.metrics: the queries of the dashboard, the alert rules and the counters are
built from the agent's own series; a metric it does not export is inconclusive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agentverify.config import load_config
from agentverify.errors import ConfigError
from agentverify.gates import Gate, Inconclusive, parse_gates
from agentverify.monitoring.dashboard import (
    Dashboard,
    check_dashboard,
    dashboard_for,
    dashboard_path,
    inconclusive_panels,
    render_dashboard_json,
)
from agentverify.monitoring.metrics import MetricsMapping, exported_names, not_exported, selector
from agentverify.monitoring.prometheus import Sample
from agentverify.monitoring.render import alert_rules_yaml, prometheus_yml
from agentverify.report.journal import ScenarioResult

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "support-agent" / "agentverify.yaml"


def example_metrics() -> MetricsMapping:
    return load_config(EXAMPLE, env="dev").monitoring.metrics


def test_the_default_mapping_draws_the_shipped_dashboard_unchanged() -> None:
    assert render_dashboard_json(MetricsMapping()) == dashboard_path().read_text(encoding="utf-8")
    shipped = json.loads(dashboard_path().read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in shipped["panels"] for t in p["targets"]]
    assert [e for p in dashboard_for(MetricsMapping()).panels for e in p.exprs] == exprs


def test_the_example_mapping_queries_the_agents_own_series() -> None:
    board = dashboard_for(example_metrics())
    assert [p.exprs for p in board.panels] == [
        ['sum(rate(support_agent_requests_total{route="/v1/ask"}[5m]))'],
        ["histogram_quantile(0.95, sum by (le) "
         "(rate(support_agent_request_duration_seconds_bucket[5m])))"],
        ['sum by (reason) (rate(support_agent_failures_total'
         '{reason!="rate_limited",reason!="bad_request"}[5m]))'],
        ["sum by (model, direction) (rate(support_agent_llm_tokens_total[5m]))"],
    ]
    grafana = json.loads(render_dashboard_json(example_metrics()))
    assert grafana["panels"][0]["targets"][0]["expr"] == board.panels[0].exprs[0]


def test_a_null_metric_leaves_its_panel_and_alert_out_saying_why() -> None:
    metrics = MetricsMapping(tokens=None, latency=None)
    assert dashboard_for(metrics).panel("Token Usage").exprs == []
    grafana = json.loads(render_dashboard_json(metrics))
    token_panel = next(p for p in grafana["panels"] if p["title"] == "Token Usage")
    assert token_panel["targets"] == [] and "tokens is null" in token_panel["description"]
    cfg = load_config(REPO / "agentverify.yaml", env="dev",
                      overrides={"monitoring.metrics.latency": None})
    rules = alert_rules_yaml(cfg)
    assert "# AgentHighLatency is left out: monitoring.metrics.latency is null" in rules
    names = [r["alert"] for r in yaml.safe_load(rules)["groups"][0]["rules"]]
    assert names == ["AgentReplicaDown", "AgentHighErrorRate", "AgentHighLoad",
                     "AgentKnownAnswersWrong"]


def test_alert_rules_and_scrape_path_follow_the_example() -> None:
    cfg = load_config(EXAMPLE, env="dev", overrides={"stack.agent.contract.metrics_path": "/m"})
    rules = {r["alert"]: r["expr"] for r in
             yaml.safe_load(alert_rules_yaml(cfg))["groups"][0]["rules"]}
    # the agent's own excluded kinds, then the client errors of monitoring.alerts
    assert rules["AgentHighErrorRate"].startswith(
        'sum(rate(support_agent_failures_total{reason!="rate_limited",reason!="bad_request",'
        'reason!="invalid_request"}[5m])) / '
        'clamp_min(sum(rate(support_agent_requests_total{route="/v1/ask"}[5m])), 1e-9)')
    assert "support_agent_request_duration_seconds_bucket" in rules["AgentHighLatency"]
    scrape = yaml.safe_load(prometheus_yml(cfg))["scrape_configs"][0]
    assert scrape["metrics_path"] == "/m"


def test_selectors_escape_label_values() -> None:
    assert selector({"a": 'say "hi"\\'}) == '{a="say \\"hi\\"\\\\"}'
    assert selector({}) == ""


def test_exported_names_and_why_a_metric_is_not_exported() -> None:
    text = ("# TYPE support_agent_requests counter\n"
            'support_agent_requests_total{route="/v1/ask"} 3\n'
            "# TYPE support_agent_request_duration_seconds histogram\n"
            'support_agent_request_duration_seconds_bucket{le="0.1"} 1\n'
            "support_agent_request_duration_seconds_count 1\n"
            "support_agent_request_duration_seconds_sum 0.05\n")
    names = exported_names(text)
    metrics = example_metrics()
    assert not_exported(metrics, "requests", names) is None
    assert not_exported(metrics, "latency", names) is None
    assert not_exported(metrics, "tokens", names, "agent-0's /metrics") == (
        "agent-0's /metrics has no support_agent_llm_tokens_total "
        "(monitoring.metrics.tokens.name); map it to the agent's series or set "
        "monitoring.metrics.tokens: null")
    assert not_exported(metrics, "cache", names) == ("monitoring.metrics.cache is null: the "
                                                     "agent exports no cache metric")
    assert set(inconclusive_panels(metrics, names)) == {"Error Rate", "Token Usage"}


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("monitoring.metrics.errors.exclude", ["x"], "exclude needs label"),
    ("monitoring.metrics.tokens.kind_label", None, "compare: kind needs kind_label"),
    ("monitoring.metrics.requests.name", "bad-name", "expected text matching"),
    ("monitoring.metrics.requests.selector", {"bad-label": "x"}, "not a Prometheus label"),
])
def test_a_bad_mapping_is_one_line(key: str, value: object, expected: str) -> None:
    overrides = {key: value}
    if key.endswith("errors.exclude"):
        overrides["monitoring.metrics.errors.label"] = None
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "agentverify.yaml", env="dev", overrides=overrides)
    assert "\n" not in str(err.value) and expected in str(err.value)


class _Prometheus:
    def __init__(self, answers: dict[str, list[Sample]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def query(self, expr: str) -> list[Sample]:
        self.asked.append(expr)
        return self.answers.get(expr, [])


def test_an_inconclusive_panel_is_not_queried_and_never_passes() -> None:
    board: Dashboard = dashboard_for(MetricsMapping())
    prom = _Prometheus({e: [Sample({}, 1.0)] for p in board.panels for e in p.exprs})
    check = check_dashboard(board, prom, timeout=0.1,  # type: ignore[arg-type]
                            inconclusive={"Token Usage": "no token counter"})
    assert not check.passed and check.failed == []
    assert [p.title for p in check.inconclusive] == ["Token Usage"]
    assert not any("token_usage_total" in q for q in prom.asked)
    assert "INCONCLUSIVE Token Usage" in str(check) and "no token counter" in str(check)


# ---------------------------------------------------------------------- inconclusive gates


def test_an_inconclusive_fact_fails_its_gate_by_default_and_says_why() -> None:
    facts = {"tokens_agree": Inconclusive("monitoring.metrics.tokens is null")}
    (gate,) = parse_gates({"tokens_agree": "== true"}, "staging")
    result = gate.evaluate(facts)
    assert (result.verdict, result.passed) == ("inconclusive", False)
    assert result.line() == ("INCONCLUSIVE tokens_agree: monitoring.metrics.tokens is null "
                             "(threshold == true; counts as failed)")
    assert result.to_json()["verdict"] == "inconclusive"
    assert result.to_json()["reason"] == "monitoring.metrics.tokens is null"
    scenario = ScenarioResult(name="s", gates=[result])
    assert not scenario.passed


def test_an_allowed_inconclusive_gate_does_not_fail_and_is_never_shown_as_passed() -> None:
    facts = {"tokens_agree": Inconclusive("no counter"), "p95_ms": 120.0}
    gates = parse_gates({"tokens_agree": {"default": "== true", "inconclusive": "allow"},
                         "p95_ms": "<= 800"}, "staging")
    results = [g.evaluate(facts) for g in gates]
    assert [r.verdict for r in results] == ["inconclusive", "pass"]
    assert results[0].passed and results[0].line().startswith("INCONCLUSIVE tokens_agree")
    assert results[0].line().endswith("allowed)")
    assert ScenarioResult(name="s", gates=results).passed
    # a measured fact is judged as usual, whatever the policy
    ok = Gate.parse("tokens_agree", "== true", on_inconclusive="allow").evaluate(
        {"tokens_agree": False})
    assert ok.verdict == "fail"


def test_a_bad_inconclusive_policy_is_a_schema_error() -> None:
    from agentverify.errors import ScenarioSchemaError

    with pytest.raises(ScenarioSchemaError, match="inconclusive: expected fail or allow"):
        parse_gates({"x": {"default": "== 1", "inconclusive": "ignore"}}, "dev")


def test_an_inconclusive_fact_travels_as_text_in_reports() -> None:
    fact = Inconclusive("why")
    assert json.dumps({"f": fact}) == '{"f": "inconclusive: why"}'
    import pickle

    assert pickle.loads(pickle.dumps(fact)).reason == "why"


def test_the_html_report_shows_an_inconclusive_gate_as_such() -> None:
    from agentverify.report.html import render_html
    from agentverify.report.journal import RunJournal

    journal = RunJournal(env="dev", backend="local")
    gate = Gate.parse("tokens_agree", "== true", on_inconclusive="allow").evaluate(
        {"tokens_agree": Inconclusive("no token counter")})
    journal.add(ScenarioResult(name="load", gates=[gate]))
    page = render_html(journal.to_json())
    assert '<td class="inconclusive">INCONCLUSIVE' in page
    assert ">pass<" not in page
