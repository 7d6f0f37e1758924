"""What the runner journals for the report, and ``agentverify report`` on saved journals.

The runner is driven with step types registered for these tests and a fake stack (unit
tests may fake); the real run is tests/integration/test_report_browser.py.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agentverify.cli import main
from agentverify.config import load_config
from agentverify.errors import StackError
from agentverify.report.journal import RunJournal
from agentverify.scenarios.model import load_scenario_file
from agentverify.scenarios.registry import StepParams, StepRegistry, StepType
from agentverify.scenarios.runner import ScenarioContext, failure_logs, run_scenario

from .test_report import make_journal


class VersionParams(StepParams):
    version: str


@dataclass
class FakeHandle:
    instance: str
    role: str
    text: str = "line 1\nline 2"

    @property
    def name(self) -> str:
        return self.instance

    @property
    def spec(self) -> Any:
        return SimpleNamespace(role=self.role)

    def logs(self, tail: int = 50) -> str:
        if self.text == "unreadable":
            raise OSError("gone")
        return f"{self.instance} (last {tail}): secret-key-123 {self.text}"


class FakeStack:
    def __init__(self) -> None:
        self.handles = [FakeHandle("redis", "cache"), FakeHandle("lb", "lb"),
                        FakeHandle("agent-0", "agent"), FakeHandle("agent-1", "agent"),
                        FakeHandle("agent-10", "agent", "unreadable")]

    def instances(self) -> list[FakeHandle]:
        return self.handles

    @staticmethod
    def redactor(text: str) -> str:
        return text.replace("secret-key-123", "***")


@pytest.fixture
def test_steps() -> StepRegistry:
    def roll(ctx: Any, params: VersionParams) -> dict[str, Any]:
        ctx.event("fault", "redis +200 ms", end=None, target="redis")
        return {"rolled": True}

    def broken(ctx: Any, params: StepParams) -> dict[str, Any]:
        raise StackError("agent-1 did not become healthy within 5s")

    registry = StepRegistry()
    registry.add(StepType("report_test_roll", roll, VersionParams, ("rolled",), "rollout"))
    registry.add(StepType("report_test_break", broken, StepParams, ("never",)))
    return registry


def _spec(tmp_path: Path, steps: str, expect: str, registry: StepRegistry) -> Any:
    path = tmp_path / "scenarios" / "journal_me.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"name: journal-me\nsteps:\n{steps}expect:\n{expect}")
    (spec,) = load_scenario_file(path, registry)
    return spec


def _ctx(journal: RunJournal) -> ScenarioContext:
    return ScenarioContext(FakeStack(), load_config(None, "dev", environ={}), env="dev",
                           report_dir=Path("reports"), say=lambda line: None, journal=journal)


def test_the_runner_times_steps_and_puts_rollouts_and_events_on_the_timeline(
        tmp_path: Path, test_steps: StepRegistry) -> None:
    journal = RunJournal(env="dev", backend="local")
    spec = _spec(tmp_path, "  - report_test_roll: {version: v2}\n", "  rolled: '== true'\n", test_steps)
    result = run_scenario(spec, _ctx(journal))
    assert result.passed and result.started <= result.steps[0].started <= result.ended
    assert result.logs == {}  # only a failed scenario keeps log lines
    journal.add(result)
    events = {e["kind"]: e for e in journal.to_json()["timeline"]}
    assert set(events) == {"scenario", "rollout", "fault"}
    assert events["rollout"]["label"] == "report_test_roll v2"
    assert events["rollout"]["scenario"] == "journal-me"
    assert events["rollout"]["detail"] == {"step": 1, "type": "report_test_roll", "error": None}
    assert events["rollout"]["end"] >= events["rollout"]["t"]
    assert events["fault"]["detail"] == {"target": "redis"} and events["fault"]["end"] is None


def test_a_failed_scenario_keeps_the_named_instances_last_lines_redacted(
        tmp_path: Path, test_steps: StepRegistry) -> None:
    journal = RunJournal(env="dev", backend="local")
    spec = _spec(tmp_path, "  - report_test_break: {}\n", "  never: '== 1'\n", test_steps)
    result = run_scenario(spec, _ctx(journal))
    assert result.error == "step 1 (report_test_break): agent-1 did not become healthy within 5s"
    assert result.logs == {"agent-1": "agent-1 (last 20): *** line 1\nline 2"}
    (ev,) = [e for e in journal.timeline if e.kind == "step"]
    assert ev.detail["error"] == "agent-1 did not become healthy within 5s"


def test_failure_logs_fall_back_to_the_lb_and_agents_and_skip_unreadable_ones() -> None:
    logs = failure_logs(FakeStack(), "chat_status: measured 200, threshold == 201")
    assert sorted(logs) == ["agent-0", "agent-1", "lb"]  # agent-10's log cannot be read
    assert sorted(failure_logs(FakeStack(), "agent-10 exited")) == []  # named, unreadable
    broken = SimpleNamespace(instances=lambda: (_ for _ in ()).throw(StackError("down")))
    assert failure_logs(broken, "x") == {}


# ------------------------------------------------------------------------------ the CLI


def test_report_re_renders_a_saved_journal_and_prints_the_summary(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_journal().write_json(tmp_path / "results.json")
    assert main(["report", str(tmp_path / "results.json"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 scenarios passed; first failing gate: rolling-update › failed_requests: " \
           "measured 2, threshold == 0" in out
    assert "  FAIL failed_requests: measured 2, threshold == 0" in out
    out_dir = tmp_path / "out"
    assert f"reports: {out_dir / 'results.html'}, {out_dir / 'junit.xml'}" in out
    page = (tmp_path / "out" / "results.html").read_text(encoding="utf-8")
    assert page.index('id="first-failure"') < page.index('id="dashboard"')
    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert root.get("tests") == "2" and root.get("failures") == "1"


def test_report_compare_shows_each_gate_beside_the_other_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_journal(p95=560.0).write_json(tmp_path / "results.json")
    make_journal(p95=400.0).write_json(tmp_path / "last.json")
    assert main(["report", str(tmp_path / "results.json"), "--compare",
                 str(tmp_path / "last.json")]) == 0
    out = capsys.readouterr().out
    assert f"compared with {tmp_path / 'last.json'}: " in out
    assert "WORSE   rolling-update › p95_ms: 560 vs 400: +160 (+40.0%), threshold <= 800" in out
    page = (tmp_path / "results.html").read_text(encoding="utf-8")  # beside the journal
    assert '<section id="compare">' in page


@pytest.mark.parametrize("content, expected", [
    (None, "missing.json: cannot read the journal"),
    ("[1, 2]", "missing.json: not an agentverify journal (expected a JSON object"),
    ('{"scenarios": []}', "missing.json: not an agentverify journal (expected keys env, backend"),
])
def test_report_bad_input_is_one_line_and_exit_code_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None,
        expected: str) -> None:
    path = tmp_path / "missing.json"
    if content is not None:
        path.write_text(content)
    assert main(["report", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("agentverify: error: ") and expected in line


def test_report_bad_compare_file_is_exit_code_2(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    make_journal().write_json(tmp_path / "results.json")
    (tmp_path / "other.json").write_text(json.dumps({"env": "x"}))
    assert main(["report", str(tmp_path / "results.json"), "--compare",
                 str(tmp_path / "other.json")]) == 2
    assert "other.json: not an agentverify journal" in capsys.readouterr().err
