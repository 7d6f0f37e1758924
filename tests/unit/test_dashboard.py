"""The shipped Grafana dashboard, its loader, and the knowledge-base / prompt fixtures."""

from __future__ import annotations

import collections
import json
import math
import re
from pathlib import Path

import pytest

from agentverify.errors import ConfigError
from agentverify.monitoring.dashboard import (
    DashboardCheck,
    PanelResult,
    load_dashboard,
    substitute_variables,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DASHBOARD = ROOT / "compose" / "grafana" / "agent.json"
KNOWLEDGE = ROOT / "fixtures" / "knowledge"
PROMPTS = ROOT / "fixtures" / "prompts.jsonl"

SEED_TITLES = ["Request Rate", "Latency", "Error Rate", "Token Usage"]


# -- the shipped dashboard ----------------------------------------------------------


def test_shipped_dashboard_has_the_seed_panels():
    dash = load_dashboard(COMPOSE_DASHBOARD)
    assert dash.title == "AI Agent Dashboard"
    assert dash.uid == "ai-agent"
    assert [p.title for p in dash.panels] == SEED_TITLES
    assert all(p.type == "timeseries" for p in dash.panels)
    assert all(len(p.targets) == 1 for p in dash.panels)


def test_shipped_dashboard_queries_use_the_exposed_metric_names():
    dash = load_dashboard()
    exprs = {p.title: p.exprs[0] for p in dash.panels}
    assert exprs == {
        "Request Rate": "sum by (type) (rate(requests_total[5m]))",
        "Latency": "histogram_quantile(0.95, sum by (le) "
                   "(rate(request_latency_seconds_bucket[5m])))",
        "Error Rate": "sum by (error) (rate(requests_error_total[5m]))",
        "Token Usage": "sum by (model, kind) (rate(token_usage_total[5m]))",
    }
    legends = {p.title: p.targets[0].legend for p in dash.panels}
    assert legends == {"Request Rate": "{{type}}", "Latency": "p95",
                       "Error Rate": "{{error}}", "Token Usage": "{{model}} {{kind}}"}


def test_shipped_dashboard_is_a_grafana_model():
    data = json.loads(COMPOSE_DASHBOARD.read_text())
    assert 36 <= data["schemaVersion"] <= 41
    assert "requests_error_total" in data["description"]
    variables = data["templating"]["list"]
    assert [(v["name"], v["type"], v["query"]) for v in variables] == [
        ("datasource", "datasource", "prometheus")]
    for panel in data["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert [t["refId"] for t in panel["targets"]] == ["A"]


# -- malformed files: one line naming file and key ---------------------------------


def _write(tmp_path: Path, data: object, name: str = "agent.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _panel(title="P", expr: object = "up", **extra):
    target = {"refId": "A"} if expr is None else {"refId": "A", "expr": expr}
    return {"type": "timeseries", "title": title, "targets": [target], **extra}


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"title": "D", "panels": [_panel(), _panel(), _panel(expr=None)]},
         "panels[2].targets[0].expr", "missing"),
        ({"title": "D", "panels": [_panel(expr=5)]},
         "panels[0].targets[0].expr", "expected a PromQL expression string, got int"),
        ({"title": "D", "panels": [_panel(expr="  ")]},
         "panels[0].targets[0].expr", "empty"),
        ({"title": "D"}, "panels", "missing"),
        ({"title": "D", "panels": {"a": 1}}, "panels", "expected a list of panels"),
        ({"panels": []}, "title", "missing"),
        ({"title": "D", "panels": ["x"]}, "panels[0]", "expected a panel object"),
        ({"title": "D", "panels": [{"type": "timeseries", "targets": []}]},
         "panels[0].title", "missing"),
        ({"title": "D", "panels": [{"type": "timeseries", "title": "T"}]},
         "panels[0].targets", "missing"),
        ({"title": "D", "panels": [_panel(), {"type": "row", "title": "R",
                                              "panels": [_panel(expr=None)]}]},
         "panels[1].panels[0].targets[0].expr", "missing"),
        ({"dashboard": {"title": "D", "panels": [_panel(expr=None)]}},
         "dashboard.panels[0].targets[0].expr", "missing"),
        (["not", "an", "object"], "(top level)", "expected a dashboard JSON object"),
    ],
)
def test_malformed_dashboard_names_file_and_key(tmp_path, data, key, expected):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_dashboard(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: {expected}")
    assert "\n" not in message
    assert info.value.source == str(path) and info.value.key == key


def test_error_message_uses_the_path_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "compose" / "grafana").mkdir(parents=True)
    _write(tmp_path / "compose" / "grafana",
           {"title": "D", "panels": [_panel(), _panel(), _panel(expr=None)]})
    with pytest.raises(ConfigError) as info:
        load_dashboard("compose/grafana/agent.json")
    assert str(info.value).startswith(
        "compose/grafana/agent.json: panels[2].targets[0].expr: missing")


def test_invalid_json_names_file_and_position(tmp_path):
    path = _write(tmp_path, '{"title": "D",\n "panels": [,]}')
    with pytest.raises(ConfigError, match=r"not valid JSON: .* at line 2 column \d+") as info:
        load_dashboard(path)
    assert str(info.value).startswith(f"{path}: not valid JSON")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the dashboard file"):
        load_dashboard(tmp_path / "nope.json")


def test_rows_text_panels_and_hidden_targets(tmp_path):
    path = _write(tmp_path, {"title": "D", "uid": "d", "panels": [
        {"type": "text", "title": "Read me", "options": {"content": "hi"}},
        {"type": "row", "title": "Row", "collapsed": True, "panels": [_panel("Inner", "up")]},
        _panel("Two", "up", targets=[{"refId": "A", "expr": "a"},
                                     {"refId": "B", "expr": "b", "hide": True}]),
    ]})
    dash = load_dashboard(path)
    assert [(p.title, p.exprs) for p in dash.panels] == [("Inner", ["up"]), ("Two", ["a"])]
    assert dash.panel("Two").targets[0].ref_id == "A"
    with pytest.raises(KeyError, match="Inner, Two"):
        dash.panel("Missing")


# -- Grafana variables ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "window", "expected"),
    [
        ("rate(x[$__rate_interval])", "1m", "rate(x[1m])"),
        ("rate(x[${__rate_interval}])", "2m", "rate(x[2m])"),
        ("increase(x[$__range]) / $__range_s", "5m", "increase(x[5m]) / 300"),
        ("rate(x[$__interval]) * $__interval_ms", "30s", "rate(x[30s]) * 30000"),
        ("x{job=\"$job\"}[$__range_ms]", "1m", "x{job=\"$job\"}[60000]"),
        ("sum(rate(requests_total[5m]))", "1m", "sum(rate(requests_total[5m]))"),
    ],
)
def test_substitute_variables(expr, window, expected):
    assert substitute_variables(expr, window=window) == expected


def test_substitute_variables_rejects_a_bad_window():
    with pytest.raises(ValueError, match="expected a Prometheus duration"):
        substitute_variables("x", window="one minute")


# -- results ---------------------------------------------------------------------------


def test_dashboard_check_summary():
    check = DashboardCheck("AI Agent Dashboard", (
        PanelResult("Request Rate", "sum(rate(requests_total[5m]))", 2, True,
                    {"labels": {"type": "chat"}, "value": 1.5}),
        PanelResult("Error Rate", "rate(requests_error[5m])", 0, False),
    ))
    assert not check.passed
    assert (check.panels_with_data, check.panels_total) == (1, 2)
    assert [p.title for p in check.failed] == ["Error Rate"]
    text = str(check)
    assert "1/2 panel queries returned data" in text
    assert re.search(r"ok\s+Request Rate\s+2 series", text)
    assert re.search(r"FAIL\s+Error Rate\s+0 series\s+rate\(requests_error\[5m\]\)", text)
    assert not DashboardCheck("empty", ()).passed


# -- fixtures: knowledge base and prompts -------------------------------------------


def _prompts() -> list[dict]:
    lines = PROMPTS.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_prompts_file_is_200_valid_json_lines():
    lines = PROMPTS.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 200
    rows = [json.loads(line) for line in lines]
    assert all(set(r) == {"id", "prompt", "topic"} for r in rows)
    assert [r["id"] for r in rows] == [f"p{i:03d}" for i in range(1, 201)]
    assert all(isinstance(r["prompt"], str) and len(r["prompt"]) > 10 for r in rows)


def test_prompts_are_unique_and_cover_every_document():
    rows = _prompts()
    prompts = [r["prompt"].strip().lower() for r in rows]
    assert len(set(prompts)) == len(prompts)
    topics = collections.Counter(r["topic"] for r in rows)
    for topic in topics:
        assert (KNOWLEDGE / topic).is_file(), f"prompt topic {topic} has no document"
    documents = {p.name for p in KNOWLEDGE.glob("*.md")}
    assert set(topics) == documents
    assert min(topics.values()) >= 10


def test_knowledge_documents_shape():
    documents = sorted(KNOWLEDGE.glob("*.md"))
    assert 10 <= len(documents) <= 14
    for doc in documents:
        text = doc.read_text(encoding="utf-8")
        assert text.startswith("# "), doc.name
        words = len(text.split())
        assert 150 <= words <= 400, f"{doc.name}: {words} words"
        paragraphs = [p for p in text.split("\n\n") if p.strip()]
        assert len(paragraphs) >= 4, doc.name


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def test_documents_are_distinguishable_by_bag_of_words():
    # A plain tf-idf cosine stands in for the reference agent's bag-of-words
    # embedding: if it cannot route most prompts, retrieval tests would be noise.
    docs = {p.name: collections.Counter(_tokens(p.read_text())) for p in KNOWLEDGE.glob("*.md")}
    df = collections.Counter(word for counts in docs.values() for word in counts)

    def vector(counts):
        return {w: c * math.log((len(docs) + 1) / (df.get(w, 0) + 1) + 1)
                for w, c in counts.items()}

    def cosine(a, b):
        dot = sum(v * b.get(w, 0.0) for w, v in a.items())
        norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
        return dot / norm if norm else 0.0

    vectors = {name: vector(counts) for name, counts in docs.items()}
    rows = _prompts()
    hits = sum(
        1 for r in rows
        if max(vectors, key=lambda name: cosine(vector(collections.Counter(_tokens(r["prompt"]))),
                                                vectors[name])) == r["topic"])
    assert hits / len(rows) >= 0.8, f"only {hits}/{len(rows)} prompts retrieve their document"
