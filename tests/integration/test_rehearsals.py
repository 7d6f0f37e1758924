"""Deploy, rolling update, faulty rollouts, rollback and scale on the real stack.

Each runs a shipped scenario (or a variant of one) through the session on the shared
stack, under a real probe, and asserts the measured facts and the gate verdicts.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agentverify.scenarios.model import load_scenario_file
from tests.integration.conftest import LOCAL_ONLY

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def scenario(file: str, name: str) -> Any:
    return next(s for s in load_scenario_file(REPO / "scenarios" / file) if s.name == name)


def inline(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    (spec,) = load_scenario_file(path)
    return spec


def run(av_session: Any, stack: Any, spec: Any) -> Any:
    assert stack.is_up
    result = av_session.run_scenario(spec)
    # the shared stack is always handed back on the configured version and size
    assert stack.versions == ["v1", "v1", "v1"]
    return result


def test_rolling_update_drops_no_request(av_session: Any, stack: Any) -> None:
    result = run(av_session, stack, scenario("rolling_update.yaml", "rolling-update"))
    facts = result.facts
    assert facts["rollout_completed"] is True and facts["replicas_updated"] == 3
    assert facts["failed_requests"] == 0, facts
    assert facts["probe_requests"] >= 50
    assert facts["final_versions"] == ["v2", "v2", "v2"]
    assert set(facts["versions_seen"]) == {"v1", "v2"}
    # the probe ran at its rate the whole time: no long silence
    assert facts["longest_gap_s"] < 5, facts["longest_gap_s"]


@LOCAL_ONLY
def test_errors_while_baking_stop_the_rollout_and_roll_back(
        av_session: Any, stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(av_session, stack,
                 scenario("rolling_update.yaml", "faulty-rollout-is-rolled-back"))
    assert result.passed, [g.line() for g in result.gates]
    facts = result.facts
    assert facts["rolled_back"] is True and facts["rollout_completed"] is False
    assert facts["replicas_updated"] == 1  # caught on the first replica
    assert "answered" in facts["rollout_failure"] and "v3-errors" in facts["rollout_failure"]
    assert facts["failed_requests"] > 0  # the bad replica did answer errors, and was seen
    # ... and the report says where they went: the new replica's request log has each one
    said = capsys.readouterr().out
    where = re.search(r"failed requests with an id: (\d+) logged by (agent-0\.g\d+)\n", said)
    assert where and int(where.group(1)) == facts["failed_requests"], said
    assert f": logged by {where.group(2)}" in said
    assert facts["failed_after_rollback"] == 0
    assert facts["final_version"] == "v1"


@LOCAL_ONLY
def test_a_faulty_rollout_fails_its_gate_with_the_measured_figures(
        av_session: Any, stack: Any, tmp_path: Path) -> None:
    spec = inline(tmp_path, textwrap.dedent("""
        name: must-complete
        steps:
          - probe_start: {rps: 25}
          - rolling_update: {version: v3-unhealthy, health_timeout_s: 6}
          - probe_stop: {}
        expect:
          rollout_completed: "== true"
          failed_requests: "== 0"
    """))
    result = run(av_session, stack, spec)
    assert not result.passed
    lines = [g.line() for g in result.gates]
    assert "FAIL rollout_completed: measured false, threshold == true" in lines
    assert "PASS failed_requests: measured 0, threshold == 0" in lines
    assert "did not become healthy" in result.facts["rollout_failure"]
    assert result.facts["final_version"] == "v1"


@LOCAL_ONLY  # a rollback is the rolling update's loop (Stack.rollback): no backend path of
# its own; rolling updates run on docker in test_rolling_update_drops_no_request
def test_rollback_to_a_tag_under_traffic(av_session: Any, stack: Any) -> None:
    result = run(av_session, stack, scenario("rolling_update.yaml", "rollback-to-tag"))
    facts = result.facts
    assert facts["all_on_version"] is True and facts["rollback_replicas"] == 3
    assert facts["failed_requests"] == 0, facts
    assert facts["final_versions"] == ["v1", "v1", "v1"]


def test_scale_out_and_in_under_traffic_and_prometheus_follows(av_session: Any,
                                                               stack: Any) -> None:
    result = run(av_session, stack, scenario("scale.yaml", "scale-out-and-in"))
    facts = result.facts
    assert facts["replicas_after_out"] == 5 and facts["targets_up_out"] == 5
    assert facts["replicas_after_in"] == 3 and facts["targets_up_in"] == 3
    assert facts["failed_requests"] == 0, facts
    assert len(stack.replicas) == 3


def test_deploy_runs_the_five_seed_steps_each_timed(av_session: Any, stack: Any) -> None:
    result = run(av_session, stack, scenario("deploy.yaml", "deploy"))
    facts = result.facts
    assert facts["deploy_ok"] is True, facts
    for phase in ("validate", "prepare", "app", "health", "switch"):
        assert facts[f"deploy_{phase}_s"] >= 0
    assert facts["deploy_total_s"] >= facts["deploy_app_s"]
    assert facts["deploy_served_by_new_ratio"] == 1
    assert facts["failed_requests"] == 0
    assert facts["final_version"] == "v2"


@LOCAL_ONLY
def test_deploy_lists_exactly_the_missing_environment_variables(av_session: Any,
                                                                stack: Any) -> None:
    before = [r.handle for r in stack.replicas]
    result = run(av_session, stack,
                 scenario("deploy.yaml", "deploy-refuses-missing-environment"))
    assert result.passed, [g.line() for g in result.gates]
    assert result.facts["deploy_missing_env"] == "MILVUS_HOST,REDIS_URL"
    assert result.facts["deploy_failed_step"] == "validate"
    assert [r.handle for r in stack.replicas] == before  # nothing was started or stopped
