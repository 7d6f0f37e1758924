"""Emergency drills on the real stack: each shipped drill passes against the reference agent
and leaves the shared stack on its baseline; the same drill fails, naming the cause, when
its runbook is broken (a rate limit never enabled, a restore that skips Milvus, a backup
API that changes nothing, a failing operation) and when its alert rule cannot fire."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentverify import agent_ops
from agentverify.backup import milvus_session
from agentverify.backup.milvus import count_entities
from agentverify.config import with_overrides
from agentverify.contract import AgentContract
from agentverify.drills.receiver import ReceiverClient
from agentverify.scenarios.model import load_scenario_file
from agentverify.scenarios.runner import ScenarioContext, restore_baseline, run_scenario
from tests.integration.conftest import make_session

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DRILLS = REPO / "scenarios" / "drills.yaml"


def _baseline(stack: Any, config: Any) -> dict[str, Any]:
    """What a drill must leave as it found it: replicas, versions, the agent's fleet-wide
    settings, the knowledge base, and every known answer citing its document."""
    with milvus_session(stack.endpoints["milvus"], "baseline") as client:
        entities = count_entities(client, config.vector_store.collection)
    answers = {}
    for known in config.known_answers:
        with httpx.Client(timeout=30) as client:
            reply = AgentContract.from_config(config).ask(client, known.question,
                                                          base_url=stack.lb_url)
        answers[known.question] = known.source in (reply.sources or ())
    return {"replicas": len(stack.replicas), "versions": sorted(set(stack.versions)),
            "rate_limit": agent_ops.current_rate_limit(stack),
            "llm": agent_ops.current_llm(stack), "entities": entities,
            "known_answers": answers}


def _failures(results: list[Any]) -> dict[str, list[str]]:
    return {r.name: [g.line() for g in r.failed_gates] + [r.error or "",
                                                          str(r.facts.get("drill_problems"))]
            for r in results if not r.passed}


#: on docker, the drills whose path differs there: promtool on the rendered rules,
#: Alertmanager reaching the receiver by its network alias and a restore into the
#: containers' volumes (the data-corruption drill). The high-load drill (scale + rate limit)
#: and the API-error drill (an admin call, then a rolling restart) add nothing
#: backend-specific that the rehearsals' scale and the operations' rolling-restart tests do
#: not run on docker, and run on local.
DOCKER_DRILLS = ("alert-rules", "drill-data-corruption")
DRILL_ALERTS = {"drill-high-load": "AgentHighLoad", "drill-api-error": "AgentHighErrorRate",
                "drill-data-corruption": "AgentKnownAnswersWrong"}


def test_every_shipped_drill_passes_and_the_stack_ends_on_its_baseline(av_session: Any,
                                                                       stack: Any) -> None:
    before = _baseline(stack, av_session.config)
    assert before["known_answers"] == {k.question: True for k in av_session.config.known_answers}
    receiver = ReceiverClient(stack.endpoints["receiver"])
    since = receiver.last_seq()
    specs = load_scenario_file(DRILLS)
    assert {s.name for s in specs} == {"alert-rules", *DRILL_ALERTS}
    if av_session.backend_name == "docker":
        specs = [s for s in specs if s.name in DOCKER_DRILLS]
    results = [av_session.run_scenario(spec) for spec in specs]
    assert not _failures(results), _failures(results)
    assert _baseline(stack, av_session.config) == before

    facts = {r.name: r.facts for r in results}
    drills = [name for name in DRILL_ALERTS if name in facts]
    assert len(drills) == (1 if av_session.backend_name == "docker" else 3), facts.keys()
    for name in drills:
        f = facts[name]
        # the rendered rehearsal timings explain the delivery: evaluation 1 s, for 1 s,
        # group_wait 1 s -- the webhook arrives about a second after Prometheus fires
        assert f["time_to_alert_s"] < f["time_to_notify_s"], (name, f)
        assert 0 < f["notify_delay_s"] <= 4, (name, f)
    # what the receiver holds: each alert firing and resolved, and the team's message
    notes = receiver.notifications(since)
    for alert in (DRILL_ALERTS[name] for name in drills):
        assert {n.status for n in notes if n.name == alert} == {"firing", "resolved"}, alert
    assert all(not n.payload_problems for n in notes)
    texts = [r.text for r in receiver.records(since, kind="notify")]
    if "drill-high-load" in facts:
        assert any(t and t.startswith("AgentHighLoad on staging: scaled the agent to 5")
                   for t in texts), texts
    receiver.close()
    # one correlated timeline: drills, their alerts, notifications and runbook operations
    kinds = {e.kind for e in av_session.journal.timeline
             if e.scenario and e.scenario.startswith("drill-")}
    assert {"drill", "alert", "notify", "runbook"} <= kinds


def _run_with(av_session: Any, stack: Any, spec: Any, overrides: dict[str, Any]) -> Any:
    """Run ``spec`` on the shared stack with runbooks of its own (runbooks are not part of
    what the stack was started with: no fresh stack is needed for them)."""
    config = with_overrides(av_session.config, overrides, source="test")
    ctx = ScenarioContext(stack, config, env=av_session.env, report_dir=av_session.report_dir,
                          say=av_session.say, backend=av_session.backend_name,
                          new_stack=av_session.fresh_stack, journal=av_session.journal)
    try:
        return run_scenario(spec, ctx)
    finally:
        ctx.close()
        restore_baseline(stack, av_session.config, av_session.say)


def _drill_with(spec: Any, **params: Any) -> Any:
    """``spec`` (one drill step) with some of the drill's parameters changed."""
    (step,) = spec.steps
    return replace(spec, steps=(replace(step, params=step.params.model_copy(update=params)),))


def test_each_drill_fails_on_the_defect_it_exists_for(tmp_path: Path, state_dir: Path) -> None:
    """One local stack whose backup LLM API is the failing primary (the switch changes
    nothing) and whose AgentHighLatency threshold is beyond the largest latency bucket (it
    can never fire); runbooks neutered in config for the others."""
    session = make_session("local", tmp_path / "reports", state_dir=state_dir, overrides={
        "model.backup.model_name": "gpt-4",
        "monitoring.alerts.p95_ms": 20_000,
    })
    drills = {s.name: s for s in load_scenario_file(DRILLS)}
    try:
        stack = session.stack()
        before = _baseline(stack, session.config)

        # the backup API switch does nothing: the backup is the same failing model (the
        # fleet stays unsteady: 8 s of it, four steady holds, say so as well as the shipped 40)
        api = session.run_scenario(_drill_with(drills["drill-api-error"],
                                               mitigate_within_s=8))
        failed = {g.name: g.line() for g in api.failed_gates}
        assert {"mitigated", "backup_model_answers", "error_ratio_after"} <= set(failed), failed
        assert failed["backup_model_answers"] == \
            "FAIL backup_model_answers: measured 0, threshold >= 5"
        assert api.facts["runbook_ok"] is True  # every operation "worked"
        assert "not steady within 8s after runbook api_error: error ratio" in \
            api.facts["drill_problems"]

        # the rate limit is never enabled
        load = _run_with(session, stack, drills["drill-high-load"], {"runbooks.high_load": [
            {"scale": {"replicas": 5}}, {"rate_limit": {"enabled": False}},
            {"notify": {"text": "scaled"}}]})
        failed = {g.name: g.line() for g in load.failed_gates}
        assert set(failed) == {"rate_limited_429"}, (failed, load.error)
        assert failed["rate_limited_429"] == "FAIL rate_limited_429: measured 0, threshold >= 1"

        # the restore skips Milvus: the cache answers right, the knowledge base is still wrong
        data = _run_with(session, stack, drills["drill-data-corruption"], {
            "runbooks.data_corruption": ["stop_agents", {"restore_backup": {"parts": ["redis"]}},
                                         "restart"]})
        failed = {g.name: g.line() for g in data.failed_gates}
        assert {"entities_lost", "entities_changed"} <= set(failed), (failed, data.error)
        assert data.facts["entities_lost"] >= 1 and data.facts["keys_lost"] == 0

        # a failing operation is notified and fails the drill with the operation named
        receiver = ReceiverClient(stack.endpoints["receiver"])
        since = receiver.last_seq()
        broken = _run_with(session, stack, drills["drill-api-error"], {"runbooks.api_error": [
            {"switch_llm": {"use": "backup"}}, "restore_backup"]})
        message = ("runbook api_error: operation 2 (restore_backup redis+milvus) failed: "
                   "no verified backup to restore")
        assert broken.error is not None and message in broken.error, broken.error
        assert any((r.text or "").startswith(message)
                   for r in receiver.records(since, kind="notify"))
        receiver.close()
        assert broken.facts["runbook_steps_ok"] == 1 and broken.facts["runbook_ok"] is False

        # the alert rule cannot fire: a p95 threshold beyond the histogram's largest bucket
        spec = load_scenario_file(_inline(tmp_path, """
name: drill-high-load-latency
steps:
  - drill:
      runbook: high_load
      alert: AgentHighLatency
      alert_timeout_s: 8           # it can never fire: the wait's length proves nothing more
      # nor does the load's size (no latency reaches a threshold beyond the largest bucket):
      # a spike a third of the shipped one, so the worker beside it is not starved
      trigger: {load: {users: 10, spawn_rate: 10, user_rps: 10}}
expect:
  time_to_alert_s: "<= 20"
"""))[0]
        latency = session.run_scenario(spec)
        assert latency.error is not None
        assert "AgentHighLatency did not fire within 8s of the cause" in latency.error, \
            latency.error
        assert "against the threshold > 20" in latency.error
        assert latency.facts["runbook_steps_ok"] is None  # nothing ran without an alert

        # every defect left the stack as it was: data repaired, settings back, 3 replicas
        assert _baseline(stack, session.config) == before
    finally:
        session.close()


def _inline(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenarios" / "inline.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path
