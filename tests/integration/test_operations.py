"""The seed's operations on the real stack: model update, log rotation with Debian's
logrotate and a rolling restart, each under a real probe; and the two cost controls of
the bundled gate (cache hygiene, completion bounds), each failing on the defect it
exists for, with a message naming the measured figure.

The shipped operations run on the shared stack of every backend (on docker the log is
rotated on the bind-mounted data directory and the reopen signal goes through
``docker kill --signal``); the defect configurations get a fresh local stack of their own.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agentverify.logrotate import count_request_ids, log_files
from agentverify.scenarios.model import load_scenario_file
from tests.integration.conftest import LOCAL_ONLY, make_session

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
OPERATIONS = REPO / "scenarios" / "operations.yaml"
LOAD = REPO / "scenarios" / "load.yaml"


def _inline(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "scenarios" / "inline.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(text))
    (spec,) = load_scenario_file(path)
    return spec


def _report(result: Any) -> list[str]:
    return [g.line() for g in result.gates] + ([f"error: {result.error}"] if result.error else [])


def test_the_shipped_operations_pass_under_traffic(av_session: Any, stack: Any) -> None:
    config = av_session.config
    generations = [r.handle.generation for r in stack.replicas]
    specs = {s.name: s for s in load_scenario_file(OPERATIONS)}
    assert list(specs) == ["model-update", "log-rotation", "rolling-restart"]

    def run(name: str) -> dict[str, Any]:
        result = av_session.run_scenario(specs[name])
        print(name, _report(result), result.facts)
        assert result.passed, _report(result)
        return result.facts

    update = run("model-update")
    assert update["model_before"] == "gpt-4" and update["model_update_replicas"] == 3
    assert set(update["models_after_update"]) == {"gpt-4o"}
    # gpt-4o is priced at a twelfth of gpt-4's input and a sixth of its output
    assert update["cost_per_request_after_usd"] < update["cost_per_request_before_usd"] / 3
    # the configured model is back after the scenario (the session's baseline restore)
    assert stack.agent_config == config
    assert all("model_name: gpt-4\n" in r.handle.spec.files["config.yaml"]
               for r in stack.replicas)

    rotation = run("log-rotation")
    assert rotation["log_rotate_mode"] == "logrotate" and rotation["log_lines_unreadable"] == 0
    for replica in stack.replicas:
        log = stack.agent_log(replica.instance)
        old = log.with_name(log.name + ".1")
        # each replica wrote into the renamed file before the signal, into a new one after
        assert old.stat().st_size > 0 and log.stat().st_size > 0, replica.instance
        # and every line is one request of this replica's, under its id
        lines = [json.loads(line) for line in old.read_text().splitlines()]
        assert {line["replica"] for line in lines} == {replica.instance}
        count = count_request_ids(log_files(log), fmt="json", field="request_id")
        assert count.unreadable == 0 and max(count.ids.values()) == 1

    restart = run("rolling-restart")
    assert restart["healthy_replicas_after"] == 3 and restart["probe_requests"] >= 50
    # every replica is a new instance (the model update and its restore made two more)
    assert [r.handle.generation for r in stack.replicas] == [g + 3 for g in generations]
    assert stack.versions == ["v1"] * 3


@LOCAL_ONLY
def test_the_configured_model_is_back_after_a_scenario_that_fails_after_the_update(
        av_session: Any, stack: Any, tmp_path: Path) -> None:
    spec = _inline(tmp_path, """
        name: model-update-then-fail
        steps:
          - probe_start: {rps: 10, unique: true}
          - model_update: {model_name: gpt-3.5-turbo, model: {temperature: 0.1}, measure_s: 0.5}
          - probe_start: {rps: 10}
        expect:
          model_after: "== gpt-3.5-turbo"
    """)
    result = av_session.run_scenario(spec)
    assert result.error == "step 3 (probe_start): a probe is already running (probe_stop it first)"
    assert result.facts["model_after"] == "gpt-3.5-turbo"
    assert result.facts["calls_not_on_new_model"] == 0
    assert stack.agent_config == av_session.config
    assert {r.handle.spec.files["config.yaml"].count("temperature: 0.7") for r in stack.replicas} \
        == {1}


def test_the_cost_controls_fail_on_an_agent_that_drops_them(tmp_path: Path,
                                                             state_dir: Path) -> None:
    """One stack whose agent caches without a TTL and asks for completions without
    max_tokens: the bundled gate's thresholds (load.yaml) fail on both, each naming its
    figure; the unbounded completions also break the cost per request."""
    (shipped,) = load_scenario_file(LOAD)
    gates = {name: shipped.expect[name] for name in
             ("calls_without_max_tokens", "cost_per_request_usd", "keys_without_ttl",
              "keys_over_ttl")}
    expect = "\n".join(f"          {k}: {v!r}" for k, v in gates.items())
    spec = _inline(tmp_path, f"""
        name: cost-controls
        steps:
          - load: {{users: 10, spawn_rate: 10, user_rps: 3, duration_s: 8, repeat_ratio: 0.8}}
          - cache_hygiene: {{}}
        expect:
{expect}
    """)
    session = make_session("local", tmp_path / "reports", state_dir=state_dir, overrides={
        "stack.replicas": 2,
        "stack.versions": {"v1": {"cache_without_ttl": True, "drop_max_tokens": True}}})
    try:
        result = session.run_scenario(spec)
    finally:
        session.close()
    failed = {g.name: g.line() for g in result.failed_gates}
    print(_report(result), result.facts)
    assert result.error is None
    assert set(failed) == {"calls_without_max_tokens", "cost_per_request_usd",
                           "keys_without_ttl"}, failed
    facts = result.facts
    # every chat call of the run asked for no limit; every cached answer never expires
    assert facts["calls_without_max_tokens"] == facts["ledger_llm_requests"] > 0
    assert facts["keys_without_ttl"] == facts["cache_keys_checked"] > 0
    assert facts["max_ttl_s"] is None
    for name in failed:
        assert failed[name].startswith(f"FAIL {name}: measured "), failed[name]
    assert failed["keys_without_ttl"] == (f"FAIL keys_without_ttl: measured "
                                          f"{facts['keys_without_ttl']}, threshold == 0")
    # the stub answers an unbounded call long: 400+ tokens where the limit gives 24..120
    assert facts["max_completion_tokens"] >= 400
