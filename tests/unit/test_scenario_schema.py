"""Scenario files: a malformed file names the file, the scenario, the step and the problem."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agentverify.errors import ScenarioSchemaError
from agentverify.scenarios.model import load_scenario_file

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_every_shipped_scenario_file_is_valid() -> None:
    files = sorted((REPO / "scenarios").glob("*.yaml"))
    assert files, "no scenario files shipped"
    for f in files:
        specs = load_scenario_file(f)
        assert specs and all(s.steps for s in specs)


def test_single_and_multiple_scenarios_with_lines(tmp_path: Path) -> None:
    path = write(tmp_path, """
        scenarios:
          - name: one
            steps: [{health: {}}]
            expect: {unhealthy_replicas: "== 0"}
          - name: two
            environments: [production]
            stack: fresh
            steps:
              - chat: {message: hi}
    """)
    one, two = load_scenario_file(path)
    assert (one.name, one.line, one.fresh_stack) == ("one", 3, False)
    assert two.fresh_stack and not two.applies_to("staging") and two.applies_to("production")
    assert two.steps[0].params.message == "hi"
    assert two.steps[0].line == 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nsteps: [{helth: {}}]\n",
         "scenario 'x': step 1: unknown step type 'helth'; expected one of:"),
        ("name: x\nsteps: [{chat: {mesage: hi}}]\n",
         "scenario 'x': step 1 (chat): unknown key 'mesage'; parameters: label, message"),
        ("name: x\nsteps: [{traffic: {requests: lots}}]\n",
         "scenario 'x': step 1 (traffic): requests: Input should be a valid integer"),
        ("name: x\nsteps: []\n", "scenario 'x': 'steps' must be a non-empty list"),
        ("steps: [{health: {}}]\n", "scenario 1 (line 1): required key 'name' is missing"),
        ("name: x\nstep: []\n", "scenario 'x': unknown key 'step'"),
        ("name: x\nsteps: [{health: {}}]\nexpect: {unhealthy_replicas: 'few'}\n",
         "expect.unhealthy_replicas: expected a threshold"),
        ("name: x\nsteps: [{health: {}}]\nexpect: {p95_ms: '<= 5'}\n",
         "expect.p95_ms: no step of this scenario measures 'p95_ms'"),
        ("name: x\nsteps: [{health: {}, chat: {}}]\n",
         "step 1: a step has exactly one key (its type)"),
        ("name: x\nstack: big\nsteps: [{health: {}}]\n", "stack: expected 'shared' or 'fresh'"),
        ("name: [x\n", "line 2:"),
        ("", "empty file"),
        ("scenarios:\n  - {name: a, steps: [health]}\n  - {name: a, steps: [health]}\n",
         "duplicate scenario name 'a'"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ScenarioSchemaError) as info:
        load_scenario_file(write(tmp_path, text))
    message = str(info.value)
    assert message.startswith(str(tmp_path / "s.yaml") + ": "), message
    assert expected in message, message
    assert "\n" not in message
