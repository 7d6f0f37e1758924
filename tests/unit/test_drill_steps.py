"""Drill scenarios and parameters are checked at collection, and the alert watch reads a
drill's moments off Prometheus and the receiver (fakes here; real ones in integration)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentverify.drills.receiver import Notification
from agentverify.drills.steps import DEFAULT_ALERTS, DRILL_FACTS
from agentverify.drills.watch import AlertWatch
from agentverify.errors import ScenarioSchemaError, StackError
from agentverify.monitoring.prometheus import Alert
from agentverify.monitoring.render import ALERT_NAMES
from agentverify.scenarios.model import load_scenario_file

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_drills_and_the_game_day_are_valid_and_placed() -> None:
    drills = {s.name: s for s in load_scenario_file(REPO / "scenarios" / "drills.yaml")}
    assert set(drills) == {"alert-rules", "drill-high-load", "drill-api-error",
                           "drill-data-corruption"}
    for name, spec in drills.items():
        assert spec.applies_to("staging") and spec.applies_to("dev"), name
        if name.startswith("drill-"):  # production's alert timings make them minutes long
            assert not spec.applies_to("production")
        for gate in ("time_to_alert_s", "time_to_notify_s", "runbook_ok", "mitigated",
                     "resolved", "failed_requests_during"):
            assert not name.startswith("drill-") or gate in spec.expect, (name, gate)
    (gameday,) = load_scenario_file(REPO / "scenarios" / "gameday.yaml")
    assert gameday.applies_to("gameday") and gameday.applies_to("production")
    assert not gameday.applies_to("staging")  # out of the quick gate
    assert [s.type for s in gameday.steps].count("drill") == 3


def test_every_trigger_has_an_alert_rule() -> None:
    assert set(DEFAULT_ALERTS.values()) <= set(ALERT_NAMES)
    assert len(DRILL_FACTS) == len(set(DRILL_FACTS))


def _scenario(tmp_path: Path, drill: str) -> Path:
    path = tmp_path / "scenarios" / "d.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"name: d\nsteps:\n  - drill: {drill}\nexpect: {{}}\n")
    return path


@pytest.mark.parametrize(("drill", "problem"), [
    ("{runbook: high_load, trigger: {}}",
     "trigger: a trigger has exactly one of fault, llm_fault, load, corrupt; got none"),
    ("{runbook: high_load, trigger: {load: {users: 5}, corrupt: {}}}",
     "got ['load', 'corrupt']"),
    ("{runbook: api_error, trigger: {llm_fault: {status: 500, duration_s: 5}}}",
     "llm_fault.duration_s: the drill removes the cause itself"),
    ("{runbook: data_corruption, trigger: {corrupt: {noise: 0.8, delete: 0.5}}}",
     "noise + delete is more than every entity"),
    ("{runbook: high_load, trigger: {flood: {}}}", "unknown key 'trigger.flood'"),
    ("{runbook: high_load, trigger: {load: {}}, recover: [{scael: {replicas: 3}}]}",
     "unknown key 'recover.0.scael'"),
    ("{runbook: High, trigger: {load: {}}}", "runbook: String should match pattern"),
])
def test_a_bad_drill_is_refused_at_collection(tmp_path: Path, drill: str, problem: str) -> None:
    with pytest.raises(ScenarioSchemaError) as info:
        load_scenario_file(_scenario(tmp_path, drill))
    assert "scenario 'd': step 1 (drill): " in str(info.value)
    assert problem in str(info.value), str(info.value)


class FakePrometheus:
    def __init__(self, states: list[list[str] | Exception]) -> None:
        self.states = states

    def alerts(self) -> list[Alert]:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if isinstance(state, Exception):
            raise state
        return [Alert(name="AgentHighLoad", state=s, labels={}, annotations={}) for s in state]


class FakeReceiver:
    def __init__(self) -> None:
        self.queue: list[list[Notification]] = []
        self.asked: list[int] = []

    def notifications(self, since: int = 0) -> list[Notification]:
        self.asked.append(since)
        return self.queue.pop(0) if self.queue else []


def _note(seq: int, status: str, name: str = "AgentHighLoad", received: float = 0.0) -> Notification:
    return Notification(seq, received or float(seq), status, name, {"alertname": name}, {}, "",
                        "", f"fp{seq}", "g")


def test_the_watch_records_pending_firing_inactive_and_notifications() -> None:
    prom = FakePrometheus([[], ["pending"], ["firing"], StackError("Prometheus restarting"),
                           ["firing"], [], []])
    receiver = FakeReceiver()
    receiver.queue = [[], [], [_note(3, "firing"), _note(4, "firing", "AgentReplicaDown")], [],
                      [], [_note(6, "resolved")]]
    watch: Any = AlertWatch(prom, receiver, "AgentHighLoad", since=2)  # type: ignore[arg-type]
    for _ in range(7):
        watch.tick()
    assert watch.pending_at is not None and watch.firing_at is not None
    assert watch.pending_at <= watch.firing_at <= watch.inactive_at
    assert watch.state == "inactive"
    assert [n.seq for n in watch.notifications] == [3, 6]  # only this alert's
    assert watch.notified("firing").seq == 3
    assert watch.notified("resolved", after=5.0).seq == 6
    assert watch.notified("firing", after=100.0) is None
    assert receiver.asked[:3] == [2, 2, 2] and receiver.asked[3] == 4  # reads on from the last
    assert watch.errors == ["Prometheus restarting"]


def test_an_alert_that_comes_back_is_not_over() -> None:
    watch: Any = AlertWatch(FakePrometheus([["firing"], [], ["firing"]]), FakeReceiver(),
                            "AgentHighLoad")  # type: ignore[arg-type]
    watch.tick()
    watch.tick()
    assert watch.inactive_at is not None
    watch.tick()
    assert watch.inactive_at is None and watch.state == "firing"
    assert watch.wait(lambda w: w.firing_at, timeout=0.1) == watch.firing_at
    assert watch.wait(lambda w: w.notified("resolved"), timeout=0.05) is None
