"""Fault rehearsals on the real stack: the shipped ones pass, every fault is removed (after a
failure and an interruption too), and each gate fails on the deployment defect it exists
for — a version knob, a config value — with a message naming the measured figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentverify.errors import FaultInjectionError
from agentverify.scenarios.model import load_scenario_file
from agentverify.scenarios.registry import StepParams, StepRegistry, StepType, default_registry
from tests.integration.conftest import LOCAL_ONLY, make_session

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FAULTS = REPO / "scenarios" / "faults.yaml"


def _clean(stack: Any) -> list[str]:
    """Proxies that still carry a fault (should be none between scenarios)."""
    return [f"{p.name}: enabled={p.enabled} toxics={[t.name for t in p.toxics]}"
            for p in stack.faults.client.proxies().values() if not p.enabled or p.toxics]


def _inline(tmp_path: Path, text: str, registry: StepRegistry | None = None) -> Any:
    path = tmp_path / "scenarios" / "inline.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    (spec,) = load_scenario_file(path, registry)
    return spec


#: each shipped rehearsal and the label of its fault on the timeline
FAULT_LABELS = {"llm-errors-are-retried": "llm error 500", "slow-milvus": "milvus latency",
                "redis-down": "redis down", "replica-killed": "kill agent-1",
                "rollout-with-requests-in-flight": ""}
#: on docker, the faults whose mechanics differ there: a dependency edge cut in the proxy
#: container and a replica SIGKILLed through the engine (the others are the same proxy API
#: and LLM-stub knobs on every backend, and run on local)
DOCKER_FAULTS = ("redis-down", "replica-killed")


def test_every_shipped_fault_rehearsal_passes_and_leaves_no_fault(av_session: Any,
                                                                   stack: Any) -> None:
    specs = load_scenario_file(FAULTS)
    assert {s.name for s in specs} == set(FAULT_LABELS)
    if av_session.backend_name == "docker":
        specs = [s for s in specs if s.name in DOCKER_FAULTS]
    results = [av_session.run_scenario(spec) for spec in specs]
    failed = {r.name: [g.line() for g in r.failed_gates] + [r.error or ""]
              for r in results if not r.passed}
    assert not failed, failed
    assert _clean(stack) == []
    assert stack.versions == ["v1"] * len(stack.versions)
    # every fault is on the timeline the report draws, with its window
    faults = [e for e in av_session.journal.timeline if e.kind in ("fault", "kill")]
    labels = " | ".join(e.label for e in faults)
    for expected in (FAULT_LABELS[s.name] for s in specs if FAULT_LABELS[s.name]):
        assert expected in labels, labels
    assert all(e.end is not None and e.end >= e.t for e in faults)
    facts = {r.name: r.facts for r in results}
    assert facts["replica-killed"]["alert_state"] in ("pending", "firing")
    # the time the alert step waited for Prometheus is journaled as a wait on the alert path
    killed = next(r for r in results if r.name == "replica-killed")
    step = next(st for st in killed.steps if st.type == "alert")
    assert 0 < step.waits["alert"] <= step.seconds
    assert facts["redis-down"]["dependency_health_s_down"] <= 5


@LOCAL_ONLY
def test_an_undrained_rollout_is_caught_by_retried_requests(tmp_path: Path, av_session: Any,
                                                           stack: Any) -> None:
    """Stopping each replica before nginx is switched away from it fails no request (nginx
    retries even POSTs on the next replica) — but each retried request ran twice."""
    spec = _inline(tmp_path, """
name: undrained-rollout
steps:
  - probe_start: {rps: 20, unique: true}
  - llm_fault: {latency_ms: 300, rate: 0, wait: false}
  - rolling_update: {version: v2, bake_s: 0.5, drain: false}
  - probe_stop: {}
expect:
  failed_requests: "== 0"
  retried_requests: "== 0"
""")
    result = av_session.run_scenario(spec)
    gates = {g.name: g for g in result.gates}
    assert result.facts["rollout_completed"] is True
    assert not gates["retried_requests"].passed, result.facts
    assert result.facts["retried_requests"] >= 1
    assert gates["retried_requests"].line().startswith("FAIL retried_requests: measured ")
    assert _clean(stack) == []


@LOCAL_ONLY
def test_faults_are_removed_after_a_failure_and_after_an_interruption(
        tmp_path: Path, av_session: Any, stack: Any) -> None:
    failing = _inline(tmp_path, """
name: fault-then-failure
steps:
  - fault: {target: redis, toxic: latency, attributes: {latency: 100}}
  - fault: {target: llm, toxic: down, replicas: [agent-0]}
  - kill: {target: agent-99}
expect:
  fault_proxies: ">= 1"
""")
    assert len([p for p in stack.faults.client.proxies().values() if p.toxics]) == 0
    result = av_session.run_scenario(failing)
    assert result.error is not None and "agent-99" in result.error
    assert _clean(stack) == []

    def interrupt(ctx: Any, params: StepParams) -> dict[str, Any]:
        assert _clean(ctx.stack), "the fault should be on when the interruption comes"
        raise KeyboardInterrupt

    registry = StepRegistry()
    registry.add(default_registry()["fault"])
    registry.add(StepType("interrupt", interrupt, StepParams, ()))
    interrupted = _inline(tmp_path, """
name: fault-then-ctrl-c
steps:
  - fault: {target: milvus, toxic: timeout, attributes: {timeout: 0}}
  - interrupt: {}
expect: {}
""", registry)
    with pytest.raises(KeyboardInterrupt):
        av_session.run_scenario(interrupted)
    assert _clean(stack) == []


@LOCAL_ONLY
def test_a_fault_on_an_unknown_replica_is_refused_before_anything_is_applied(
        tmp_path: Path, av_session: Any, stack: Any) -> None:
    spec = _inline(tmp_path, """
name: bad-replica
steps:
  - fault: {target: redis, toxic: down, replicas: [agent-7]}
expect:
  fault_proxies: "== 1"
""")
    result = av_session.run_scenario(spec)
    assert result.error == ("step 1 (fault): fault: no replica agent-7 "
                            "(replicas: agent-0, agent-1, agent-2)")
    assert _clean(stack) == []
    with pytest.raises(FaultInjectionError, match="proxy not found"):
        stack.faults.client.add_toxic("redis.agent-7", "latency", attributes={"latency": 1})


def test_each_fault_gate_fails_on_the_defect_it_guards_against(tmp_path: Path,
                                                               state_dir: Path) -> None:
    """One stack with every defect at once; each shipped rehearsal fails the gate that
    names its defect (and the figure measured), and nothing else is needed to see why:

    * model.retry_count 0: the agent does not retry a failing LLM call;
    * vector_store.timeout 0.15 s: tighter than Milvus is while it is slow;
    * a version whose /health ignores Redis and whose /chat fails without the cache;
    * stack.lb.retries 0: nginx does not send a request to another replica.
    """
    session = make_session("local", tmp_path / "reports", state_dir=state_dir, overrides={
        "model.retry_count": 0,
        "vector_store.timeout": 0.15,
        "stack.lb.retries": 0,
        "stack.versions": {"v1": {"health_ignores": ["redis"], "cache_required": True},
                           "v2": {}},
    })
    expected = {
        "llm-errors-are-retried": {"probe_error_ratio"},
        "slow-milvus": {"probe_error_ratio"},
        "redis-down": {"dependency_health_ok_down", "dependency_health_named_down",
                       "failed_requests"},
        "replica-killed": {"failed_requests"},
    }
    try:
        by_name = {s.name: s for s in load_scenario_file(FAULTS)}
        for name, gates in expected.items():
            result = session.run_scenario(by_name[name])
            failed = {g.name: g.line() for g in result.failed_gates}
            assert gates <= set(failed), (name, failed, result.error, result.facts)
            for gate in gates:
                assert failed[gate].startswith(f"FAIL {gate}: measured "), failed[gate]
        assert _clean(session.stack()) == []
    finally:
        session.close()
