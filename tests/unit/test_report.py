"""Report writers on small journals built with the journal's own classes.

The journal's JSON shape (old keys kept), the timeline, JUnit (structure and the common
schema), the comparison of two runs, the terminal summary, the HTML page (first failing
gate first, self-contained, deterministic) and the panels capture with a fake
Prometheus. A real run's report is tests/integration/test_report_browser.py.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import xmlschema

from agentverify.errors import StackError, UsageError
from agentverify.gates import Gate
from agentverify.monitoring.dashboard import load_dashboard
from agentverify.monitoring.prometheus import Series
from agentverify.report.compare import compare_lines, compare_runs
from agentverify.report.html import render_html, write_html
from agentverify.report.journal import (
    RunJournal,
    ScenarioResult,
    StepResult,
    TimeSeries,
    read_journal,
)
from agentverify.report.junit import render_junit, write_junit
from agentverify.report.panels import (
    capture_panels,
    panel_unit,
    rate_window,
    record_panels,
    with_window,
)
from agentverify.report.summary import first_failure, summary_lines

JUNIT_XSD = Path(__file__).parent / "data" / "junit.xsd"
T0 = 1_750_000_000.0


def gates(facts: dict[str, Any], **thresholds: str) -> list[Any]:
    return [Gate.parse(name, spec).evaluate(facts) for name, spec in thresholds.items()]


def make_journal(*, red: bool = True, p95: float = 40.0, cost: float = 0.0004) -> RunJournal:
    """Two scenarios: smoke (passes) and rollout (fails one gate when ``red``)."""
    j = RunJournal(env="staging", backend="local", started=T0)
    j.stack = {"run_id": "r1", "services": {"lb": {"url": "http://127.0.0.1:1"},
                                            "agent-0": {"url": "u", "version": "v1"},
                                            "agent-1": {"url": "u", "version": "v1"}}}
    smoke = ScenarioResult(name="smoke", file="scenarios/smoke.yaml", started=T0 + 10,
                           ended=T0 + 20, seconds=10.0)
    smoke.gates = gates({"chat_status": 200}, chat_status="== 200")
    smoke.steps = [StepResult(1, "health", 0.5, started=T0 + 10),
                   StepResult(2, "chat", 0.2, started=T0 + 10.5)]
    j.add(smoke)
    facts = {"failed_requests": 2 if red else 0, "p95_ms": p95, "cost_per_request_usd": cost,
             "cost_usd": 0.5, "budget_usd": 5.0}
    roll = ScenarioResult(name="rolling-update", file="scenarios/rolling_update.yaml",
                          started=T0 + 21, ended=T0 + 51, seconds=30.0, facts=facts)
    roll.gates = gates(facts, p95_ms="<= 800", failed_requests="== 0")
    roll.steps = [StepResult(1, "probe_start", 0.0, started=T0 + 21),
                  StepResult(2, "rolling_update", 25.0, started=T0 + 22)]
    roll.series = {"probe latency ms": TimeSeries([[i / 10, 20.0 + i % 5] for i in range(290)],
                                                  unit="ms", t0=T0 + 21, gate="p95_ms")}
    roll.logs = {"agent-1": "INFO ready\n\x1b[31mERROR boom\x1b[0m"}
    j.add(roll)
    j.event("rollout", "rolling_update v2", t=T0 + 22, end=T0 + 47, scenario="rolling-update")
    j.event("alert", "AgentHighErrorRate", t=T0 + 30, scenario="rolling-update")
    j.panels = {title: {"expr": f"q{i}", "unit": u, "step": 1.0,
                        "series": [{"labels": {"type": "chat"}, "legend": "chat",
                                    "points": [[T0 + 5 + k, float(k % 7)] for k in range(50)]}]}
                for i, (title, u) in enumerate([("Request Rate", "req/s"), ("Latency", "ms"),
                                                ("Error Rate", "errors/s"),
                                                ("Token Usage", "tokens/s")])}
    j.ended = T0 + 55
    return j


# ------------------------------------------------------------------------------ journal


def test_journal_json_keeps_the_old_keys_and_adds_the_new_ones() -> None:
    data = json.loads(json.dumps(make_journal().to_json()))
    assert {"env", "backend", "started", "passed", "stack", "scenarios"} <= set(data)
    assert data["started"] == "2025-06-15T15:06:40Z"  # still the ISO string it was
    assert data["started_unix"] == T0 and data["ended_unix"] == T0 + 55
    s = data["scenarios"][1]
    assert {"name", "file", "passed", "seconds", "error", "facts", "gates", "steps"} <= set(s)
    assert s["gates"][1] == {"name": "failed_requests", "threshold": "== 0", "measured": 2,
                             "passed": False, "verdict": "fail"}
    assert (s["started"], s["ended"]) == (T0 + 21, T0 + 51)
    assert s["steps"][1]["started"] == T0 + 22
    series = s["series"]["probe latency ms"]
    assert series["unit"] == "ms" and series["gate"] == "p95_ms" and len(series["points"]) == 290
    assert s["logs"]["agent-1"].startswith("INFO ready")


def test_timeline_has_scenario_bands_and_recorded_events_in_time_order() -> None:
    timeline = make_journal().to_json()["timeline"]
    assert [(e["kind"], e["label"]) for e in timeline] == [
        ("scenario", "smoke"), ("scenario", "rolling-update"), ("rollout", "rolling_update v2"),
        ("alert", "AgentHighErrorRate")]
    assert timeline[1]["detail"] == {"passed": False}
    assert timeline[3]["end"] is None and timeline[3]["scenario"] == "rolling-update"


def test_a_result_that_never_ran_gets_its_times_from_the_journal() -> None:
    j = RunJournal(env="dev", backend="local")
    result = ScenarioResult(name="no-stack", error="stack failed", seconds=2.0)
    j.add(result)
    assert result.ended is not None and result.started == pytest.approx(result.ended - 2.0)


def test_time_series_reads_as_its_list_of_points() -> None:
    s = TimeSeries.of([[0, 1.5], [1, 2.5]])
    assert len(s) == 2 and s[1] == [1, 2.5] and list(s) == [[0, 1.5], [1, 2.5]]
    assert all(len(p) == 2 for p in s) and TimeSeries.of(s) is s


def test_read_journal_rejects_bad_input_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"missing\.json: cannot read the journal"):
        read_journal(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UsageError, match=r"bad\.json: not an agentverify journal \(not valid JSON"):
        read_journal(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"name": "a package.json"}')
    with pytest.raises(UsageError, match=r"other\.json: not an agentverify journal.*missing: "
                                         r"env, backend, scenarios"):
        read_journal(tmp_path / "other.json")
    (tmp_path / "gates.json").write_text('{"env": "x", "backend": "y", "scenarios": '
                                         '[{"name": "a", "passed": true, "gates": [1]}]}')
    with pytest.raises(UsageError, match=r"scenarios\[0\]\.gates: expected a list of objects"):
        read_journal(tmp_path / "gates.json")
    for exc_path in ("missing.json", "bad.json"):
        with pytest.raises(UsageError) as info:
            read_journal(tmp_path / exc_path)
        assert "\n" not in str(info.value)


def test_a_journal_from_before_the_timeline_still_renders(tmp_path: Path) -> None:
    old = {"env": "dev", "backend": "local", "passed": False, "started": "2025-01-01T00:00:00Z",
           "stack": None, "scenarios": [{"name": "a", "file": "s/a.yaml", "passed": False,
                                         "seconds": 1.0, "error": None, "facts": {"x": 1},
                                         "gates": [{"name": "x", "threshold": "== 2",
                                                    "measured": 1, "passed": False}],
                                         "steps": [{"index": 1, "type": "chat", "seconds": 0.1,
                                                    "facts": {}, "error": None}]}]}
    (tmp_path / "results.json").write_text(json.dumps(old))
    page = render_html(read_journal(tmp_path / "results.json"))
    assert "first failing gate" in page and "No dashboard panels" in page


# ------------------------------------------------------------------------------ junit


def test_junit_has_a_testcase_per_scenario_with_gates_as_properties() -> None:
    root = render_junit(make_journal().to_json()).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "2" and root.get("failures") == "1"
    (suite,) = root.findall("testsuite")
    assert suite.get("errors") == "0" and suite.get("timestamp") == "2025-06-15T15:06:40"
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name"), c.get("time")) for c in cases] == [
        ("smoke", "smoke", "10.000"), ("rolling_update", "rolling-update", "30.000")]
    assert cases[0].find("failure") is None
    props = {p.get("name"): p.get("value") for p in cases[1].iter("property")}
    assert props == {"gate.p95_ms": "40.0|<= 800|pass", "gate.failed_requests": "2|== 0|fail"}
    failure = cases[1].find("failure")
    assert failure.get("message") == "failed_requests: measured 2, threshold == 0"
    assert failure.get("type") == "GateFailed" and "PASS p95_ms" in failure.text
    out = cases[1].find("system-out").text
    assert "== agent-1: last log lines ==" in out and "\x1b" not in out  # XML 1.0 cannot carry it


def test_junit_error_element_and_counts_for_a_scenario_that_errored(tmp_path: Path) -> None:
    j = make_journal(red=False)
    j.scenarios[0].error = "step 2 (chat): StackError: lb at 127.0.0.1 refused\nmore detail"
    path = write_junit(j, tmp_path / "junit.xml")
    root = ET.parse(path).getroot()
    assert (root.get("failures"), root.get("errors")) == ("0", "1")
    error = root.find("testsuite/testcase[@name='smoke']/error")
    assert error.get("message") == "step 2 (chat): StackError: lb at 127.0.0.1 refused"
    assert error.text.endswith("more detail")


def test_junit_is_valid_against_the_common_schema(tmp_path: Path) -> None:
    schema = xmlschema.XMLSchema(JUNIT_XSD)
    j = make_journal()
    j.scenarios[0].error = "boom"
    for journal in (j, make_journal(red=False), RunJournal(env="dev", backend="local")):
        path = write_junit(journal, tmp_path / "junit.xml")
        schema.validate(str(path))
        assert path.read_bytes().startswith(b"<?xml version='1.0' encoding='utf-8'?>")


# ------------------------------------------------------------------------------ compare


def test_compare_marks_a_p95_regression_still_under_its_threshold_as_worse() -> None:
    this = make_journal(red=False, p95=560.0, cost=0.0006).to_json()
    other = make_journal(red=False, p95=400.0, cost=0.0004).to_json()
    rows = {(r.scenario, r.name): r for r in compare_runs(this, other)}
    p95 = rows[("rolling-update", "p95_ms")]
    assert p95.passed and p95.other_passed and p95.trend == "worse"
    assert p95.change == pytest.approx(160.0) and p95.change_ratio == pytest.approx(0.4)
    assert p95.change_text == "+160 (+40.0%)"
    cost = rows[("rolling-update", "cost_per_request_usd")]  # not gated, still compared
    assert cost.threshold == "" and cost.trend == "worse"
    assert rows[("smoke", "chat_status")].trend == "same"
    assert rows[("smoke", "chat_status")].change_text == ""  # nothing to say


def test_compare_by_verdict_and_direction_and_missing_gates() -> None:
    red, green = make_journal(red=True).to_json(), make_journal(red=False).to_json()
    rows = {(r.scenario, r.name): r for r in compare_runs(red, green)}
    assert rows[("rolling-update", "failed_requests")].trend == "worse"  # verdict flipped
    back = {(r.scenario, r.name): r for r in compare_runs(green, red)}
    assert back[("rolling-update", "failed_requests")].trend == "better"
    faster = {(r.scenario, r.name): r for r in
              compare_runs(make_journal(p95=300.0).to_json(), make_journal(p95=400.0).to_json())}
    assert faster[("rolling-update", "p95_ms")].trend == "better"
    other = make_journal().to_json()
    other["scenarios"][0]["gates"].append({"name": "old_gate", "threshold": ">= 1",
                                           "measured": 3, "passed": True})
    this = make_journal().to_json()
    this["scenarios"][0]["gates"].append({"name": "new_gate", "threshold": ">= 1",
                                          "measured": 3, "passed": True})
    trends = {r.name: r.trend for r in compare_runs(this, other)}
    assert trends["new_gate"] == "new" and trends["old_gate"] == "gone"


def test_compare_lines_count_regressions() -> None:
    rows = compare_runs(make_journal(p95=560.0).to_json(), make_journal(p95=400.0).to_json())
    lines = compare_lines(rows, "last.json")
    assert lines[0].text.startswith("compared with last.json: ") and lines[0].status == "fail"
    assert "rolling-update › p95_ms" in lines[1].text  # the regression leads
    (p95,) = [line for line in lines if "rolling-update › p95_ms" in line.text]
    assert p95.text.split()[0] == "WORSE"
    assert "560 vs 400: +160 (+40.0%), threshold <= 800" in p95.text


# ------------------------------------------------------------------------------ summary


def test_summary_leads_with_the_first_failing_gate() -> None:
    data = make_journal().to_json()
    failure = first_failure(data)
    assert (failure.scenario, failure.gate, failure.measured) == ("rolling-update",
                                                                 "failed_requests", 2)
    lines = summary_lines(data, report_dir="reports")
    assert lines[0].text == ("1 of 2 scenarios passed; first failing gate: rolling-update › "
                             "failed_requests: measured 2, threshold == 0")
    assert lines[0].status == "fail"
    texts = [line.text for line in lines]
    assert "rolling-update: FAILED in 30.0s" in texts
    assert "  FAIL failed_requests: measured 2, threshold == 0" in texts
    assert texts[-1] == "reports: reports/results.json, reports/results.html, reports/junit.xml"


def test_summary_of_a_green_run_and_of_an_error() -> None:
    assert first_failure(make_journal(red=False).to_json()) is None
    assert summary_lines(make_journal(red=False).to_json())[0].text == "2 of 2 scenarios passed"
    j = RunJournal(env="dev", backend="local")
    j.add(ScenarioResult(name="x", error="the shared stack failed to start earlier: boom\nlog"))
    assert str(first_failure(j.to_json())) == "x: the shared stack failed to start earlier: boom"


# ------------------------------------------------------------------------------ html


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside the header."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def test_html_header_starts_with_the_first_failing_gate() -> None:
    page = render_html(make_journal().to_json())
    tags = _tags(page)
    header = next(i for i, (tag, _) in enumerate(tags) if tag == "header")
    assert tags[header + 1] == ("div", {"class": "first-failure", "id": "first-failure"})
    start = page.index('<div class="first-failure"')
    banner = page[start:page.index("</div>", start)]
    for text in ("FAILED", "rolling-update", "failed_requests", ">2<", "== 0"):
        assert text in banner
    head = page[page.index("<header>"):page.index("</header>")]
    for text in ("staging", "local", "v1 ×2", "55.0 s", "1 of 2"):
        assert text in head


def test_html_is_self_contained() -> None:
    page = render_html(make_journal().to_json(), compare=make_journal(p95=20.0).to_json())
    for tag, attrs in _tags(page):
        assert tag not in ("script", "link", "img", "iframe", "object", "embed"), tag
        for name in ("src", "href", "xlink:href"):
            value = attrs.get(name)
            assert value is None or value.startswith("#"), (tag, name, value)
    assert "url(http" not in page and "@import" not in page and "<script" not in page


def test_html_orders_failed_scenarios_first_open_and_passed_ones_collapsed() -> None:
    tags = [a for tag, a in _tags(render_html(make_journal().to_json()))
            if tag == "details" and "scenario" in (a.get("class") or "")]
    assert [(a["data-scenario"], "open" in a) for a in tags] == [("rolling-update", True),
                                                                 ("smoke", False)]
    page = render_html(make_journal().to_json())
    section = page[page.index('data-scenario="rolling-update"'):]
    assert section.index("failed_requests") < section.index("p95_ms")  # failures first
    assert "ERROR boom" in section and "\x1b" not in section


def test_html_draws_every_panel_and_the_scenario_series_with_axes() -> None:
    page = render_html(make_journal().to_json())
    for title in ("Request Rate", "Latency", "Error Rate", "Token Usage"):
        start = page.index(f'data-panel="{title}"')
        figure = page[start:page.index("</figure>", start)]
        assert "<svg" in figure and "elapsed since run start" in figure and "UTC" in figure
        # the panel's one series is one line through its 50 points, drawn from the journal
        line = re.search(r'<g id="panel\d-series-0"><path d="([^"]+)"', figure)
        assert line is not None and len(re.findall(r"[ML]", line.group(1))) == 50
        assert "rollout: rolling_update v2" in figure and "alert: AgentHighErrorRate" in figure
    start = page.index('data-series="probe latency ms"')
    figure = page[start:page.index("</figure>", start)]
    assert "gate p95_ms &lt;= 800" in figure and "(ms)" in figure
    assert "budget use" in page and "10.0%" in page  # $0.50 of $5


def test_a_panel_whose_points_are_all_gaps_says_it_has_no_data() -> None:
    data = make_journal().to_json()
    for panel in data["panels"].values():
        for series in panel["series"]:
            series["points"] = [[t, None] for t, _v in series["points"]]
    page = render_html(data)
    start = page.index('data-panel="Latency"')
    figure = page[start:page.index("</figure>", start)]
    assert "no data in this run" in figure and "-series-" not in figure


def test_html_ids_are_unique_and_rendering_is_exact(tmp_path: Path) -> None:
    data = make_journal().to_json()
    page = render_html(data)
    ids = [a["id"] for _, a in _tags(page) if a.get("id")]
    assert len(ids) == len(set(ids))
    path = write_html(make_journal(), tmp_path / "results.html")
    assert path.read_text(encoding="utf-8") == page == render_html(json.loads(json.dumps(data)))


def test_html_compare_section() -> None:
    page = render_html(make_journal(p95=560.0).to_json(), compare=make_journal(p95=400.0).to_json(),
                       compare_label="last-week.json")
    start = page.index('<section id="compare">')
    section = page[start:page.index("</section>", start)]
    assert "Compared with last-week.json" in section
    assert '<td class="trend-worse">worse</td>' in section and "+40.0%" in section


# ------------------------------------------------------------------------------ panels


class FakePrometheus:
    """Answers range queries with a ramp (and one NaN), recording what was asked."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, float, float, float]] = []
        self.fail = fail

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        if self.fail:
            raise StackError("Prometheus at http://127.0.0.1:9: cannot connect")
        self.calls.append((expr, start, end, step))
        n = int((end - start) // step) + 1
        values = [(start + i * step, 0.25 if i else math.nan) for i in range(n)]
        return [Series({"type": "chat", "model": "gpt-4", "kind": "prompt"}, values)]

    def __enter__(self) -> FakePrometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_capture_panels_steps_by_the_second_and_caps_the_points() -> None:
    prom = FakePrometheus()
    panels = capture_panels(prom, load_dashboard(), T0, T0 + 90)
    assert list(panels) == ["Request Rate", "Latency", "Error Rate", "Token Usage"]
    assert {c[3] for c in prom.calls} == {1}
    latency = panels["Latency"]
    assert latency["unit"] == "ms" and latency["series"][0]["points"][1] == [T0 + 1, 250.0]
    assert latency["series"][0]["points"][0] == [T0, None]  # NaN is a gap, valid JSON
    assert panels["Token Usage"]["series"][0]["legend"] == "gpt-4 prompt"
    assert panels["Request Rate"]["series"][0]["legend"] == "chat"
    prom = FakePrometheus()
    long = capture_panels(prom, load_dashboard(), T0, T0 + 6 * 3600)
    assert prom.calls[0][3] == 37 and len(long["Latency"]["series"][0]["points"]) <= 600


def test_capture_panels_sizes_the_rate_windows_to_the_run() -> None:
    prom = FakePrometheus()
    panels = capture_panels(prom, load_dashboard(), T0, T0 + 60, window=rate_window(1.0, 1.0))
    assert all("[10s]" in c[0] and "[5m]" not in c[0] for c in prom.calls)
    assert panels["Request Rate"]["expr"] == "sum by (type) (rate(requests_total[5m]))"
    assert panels["Request Rate"]["query"] == "sum by (type) (rate(requests_total[10s]))"
    assert with_window("max_over_time(x[5m:1m]) + rate(y[ 2h ])", "30s") == \
        "max_over_time(x[5m:1m]) + rate(y[30s])"  # a subquery keeps its own range
    assert rate_window(30.0, 15.0) == "60s" and rate_window(1.0, 5.0) == "20s"
    page = render_html({"env": "dev", "backend": "local", "scenarios": [], "timeline": [],
                        "panels": panels, "started_unix": T0})
    assert "dashboard: sum by (type) (rate(requests_total[5m])) (rate window sized" in page


def test_panel_units_read_as_people_say_them() -> None:
    dash = load_dashboard()
    assert [panel_unit(p)[0] for p in dash.panels] == ["req/s", "ms", "errors/s", "tokens/s"]


class _Stack:
    endpoints = {"prometheus": "http://127.0.0.1:9"}


def test_a_failed_capture_is_noted_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import agentverify.monitoring.prometheus as prometheus

    monkeypatch.setattr(prometheus, "PrometheusClient", lambda url: FakePrometheus(fail=True))
    said: list[str] = []
    j = make_journal()
    j.panels = {}
    record_panels(j, _Stack(), say=said.append)
    assert j.panels == {} and "cannot connect" in (j.panels_error or "")
    assert said and said[0].startswith("could not capture the dashboard panels")
    assert "cannot connect" in render_html(j.to_json())


def test_record_panels_covers_the_whole_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import agentverify.monitoring.prometheus as prometheus

    prom = FakePrometheus()
    monkeypatch.setattr(prometheus, "PrometheusClient", lambda url: prom)
    j = make_journal()
    record_panels(j, _Stack(), say=lambda line: None)
    assert j.panels_error is None and set(j.panels) == {"Request Rate", "Latency", "Error Rate",
                                                        "Token Usage"}
    assert prom.calls[0][1] == T0 and prom.calls[0][2] == j.ended
