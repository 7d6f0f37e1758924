"""Runbooks executed against a fake stack and agent: operations in order, each timed and on
the timeline, a failure notified and named, and what they change put back afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentverify.agent_ops import AgentOpResult
from agentverify.config import load_config, with_overrides
from agentverify.drills import runbook as runbook_module
from agentverify.drills.runbook import RunbookRun
from agentverify.errors import AgentOpError, RunbookError, ScenarioError
from agentverify.report.journal import RunJournal
from agentverify.scenarios.runner import ScenarioContext

REPO = Path(__file__).resolve().parents[2]


@dataclass
class FakeReplica:
    slot: int
    version: str = "v1"

    @property
    def instance(self) -> str:
        return f"agent-{self.slot}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{9000 + self.slot}"


class FakeRollout:
    def __init__(self, n: int) -> None:
        self.steps, self.failure, self.seconds = [object()] * n, None, 0.1


class FakeStack:
    def __init__(self, replicas: int = 3) -> None:
        self.replicas = [FakeReplica(i) for i in range(replicas)]
        self.calls: list[tuple[str, Any]] = []
        self.current_version = "v1"
        self.endpoints = {"receiver": "http://receiver"}

    def scale(self, n: int, *, version: str | None = None) -> float:
        self.calls.append(("scale", (n, version)))
        self.replicas = [FakeReplica(i, version or "v1") for i in range(n)]
        return 0.1

    def restart_agents(self, *, health_timeout: float | None = None) -> FakeRollout:
        self.calls.append(("restart_agents", health_timeout))
        return FakeRollout(len(self.replicas))

    def stop_agents(self) -> list[FakeReplica]:
        self.calls.append(("stop_agents", None))
        stopped, self.replicas = self.replicas, []
        return stopped


class FakeReceiver:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def notify(self, text: str) -> Any:
        self.texts.append(text)
        return type("Rec", (), {"seq": len(self.texts)})()


class FakeAgent:
    """The agent operations of agentverify.agent_ops a runbook calls, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.limit = {"enabled": False, "requests_per_second": 20.0, "burst": 20}
        self.use = "primary"
        self.fail: set[str] = set()

    def rate_limit(self, stack: Any, **want: Any) -> AgentOpResult:
        self.calls.append(("rate_limit", want))
        if "rate_limit" in self.fail:
            raise AgentOpError("POST /admin/rate-limit answered 503")
        previous, self.limit = dict(self.limit), {**self.limit, **want}
        return AgentOpResult("rate_limit", "admin", "set", 0.01, previous)

    def switch_llm(self, stack: Any, use: str) -> AgentOpResult:
        self.calls.append(("switch_llm", use))
        if "switch_llm" in self.fail:
            raise AgentOpError("LLM switch to backup did not reach every replica within 10s")
        previous, self.use = {"use": self.use}, use
        return AgentOpResult("switch_llm", "admin", f"now on {use}", 0.01, previous)

    def clear_cache(self, stack: Any) -> AgentOpResult:
        self.calls.append(("clear_cache", None))
        return AgentOpResult("clear_cache", "admin", "7 deleted", 0.01, deleted=7)


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> FakeAgent:
    fake = FakeAgent()
    for name in ("rate_limit", "switch_llm", "clear_cache"):
        monkeypatch.setattr(runbook_module.agent_ops, name, getattr(fake, name))
    monkeypatch.setattr(runbook_module, "unhealthy", lambda replicas, path: [])
    return fake


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> FakeReceiver:
    fake = FakeReceiver()
    monkeypatch.setattr(runbook_module, "receiver_of", lambda ctx: fake)
    return fake


def _ctx(tmp_path: Path, stack: FakeStack, **overrides: Any) -> ScenarioContext:
    config = load_config(REPO / "agentverify.yaml", "staging")
    if overrides:
        config = with_overrides(config, overrides)
    ctx = ScenarioContext(stack, config, env="staging", report_dir=tmp_path,  # type: ignore[arg-type]
                          say=lambda line: None, journal=RunJournal(env="staging", backend="fake"))
    ctx.scenario = "drill"
    return ctx


def test_high_load_runs_in_order_is_timed_and_notifies_the_team(tmp_path: Path, agent: FakeAgent,
                                                                 receiver: FakeReceiver) -> None:
    stack = FakeStack()
    ctx = _ctx(tmp_path, stack)
    run = RunbookRun(ctx, "high_load", alert="AgentHighLoad").run()
    assert run.ok and run.steps_ok == 3
    assert [o.label for o in run.operations] == ["scale 5", "rate_limit on 5/s burst 10", "notify"]
    assert stack.calls == [("scale", (5, None))]
    assert agent.calls == [("rate_limit", {"enabled": True, "requests_per_second": 5.0,
                                           "burst": 10})]
    assert receiver.texts == ["AgentHighLoad on staging: scaled the agent to 5 replicas, "
                              "rate limit on"]
    events = [(e.kind, e.label) for e in ctx.journal.timeline]
    assert ("runbook", "high_load: scale 5") in events
    assert ("runbook", "runbook high_load") in events
    assert ("notify", "team notified: AgentHighLoad on staging: scaled the agent to 5 replicas, "
                      "ra") in events
    assert all(e.end is not None and e.end >= e.t for e in ctx.journal.timeline
               if e.kind == "runbook")
    # put back after the scenario: the rate limit as it was before the runbook
    assert ctx.run_cleanups() == []
    assert agent.limit == {"enabled": False, "requests_per_second": 20.0, "burst": 20}


def test_a_failed_operation_is_notified_and_names_the_operation(tmp_path: Path,
                                                                agent: FakeAgent,
                                                                receiver: FakeReceiver) -> None:
    agent.fail.add("switch_llm")
    stack = FakeStack()
    run = RunbookRun(_ctx(tmp_path, stack), "api_error", alert="AgentHighErrorRate")
    with pytest.raises(RunbookError) as info:
        run.run()
    message = ("runbook api_error: operation 1 (switch_llm backup) failed: LLM switch to "
               "backup did not reach every replica within 10s")
    assert str(info.value) == message
    assert receiver.texts == [message]      # the seed's notify_error
    assert not run.ok and run.steps_ok == 0
    assert [o.name for o in run.operations] == ["switch_llm"]  # nothing ran after it
    assert ("clear_cache", None) not in agent.calls and stack.calls == []


def test_stopped_agents_come_back_with_restart_and_downtime_is_measured(
        tmp_path: Path, agent: FakeAgent, receiver: FakeReceiver) -> None:
    stack = FakeStack()
    ctx = _ctx(tmp_path, stack, **{"runbooks.outage": ["stop_agents", "restart"]})
    run = RunbookRun(ctx, "outage").run()
    assert stack.calls == [("stop_agents", None), ("scale", (3, "v1"))]
    assert run.downtime_s is not None and run.downtime_s >= 0
    assert ctx.run_cleanups() == [] and stack.calls[-1] == ("scale", (3, "v1"))  # not again


def test_agents_a_runbook_stopped_and_never_restarted_are_started_after_the_scenario(
        tmp_path: Path, agent: FakeAgent, receiver: FakeReceiver) -> None:
    stack = FakeStack()
    ctx = _ctx(tmp_path, stack, **{"runbooks.halt": ["stop_agents"]})
    RunbookRun(ctx, "halt").run()
    assert stack.replicas == []
    assert ctx.run_cleanups() == []
    assert len(stack.replicas) == 3 and stack.calls[-1] == ("scale", (3, "v1"))


def test_a_setting_changed_twice_goes_back_to_its_first_value(tmp_path: Path, agent: FakeAgent,
                                                              receiver: FakeReceiver) -> None:
    stack = FakeStack()
    ctx = _ctx(tmp_path, stack, **{"runbooks.flip": [{"switch_llm": {"use": "backup"}},
                                                     {"switch_llm": {"use": "primary"}},
                                                     {"switch_llm": {"use": "backup"}}]})
    RunbookRun(ctx, "flip").run()
    assert agent.use == "backup"
    assert ctx.run_cleanups() == []
    assert agent.use == "primary"
    assert agent.calls.count(("switch_llm", "primary")) == 2  # once in the runbook, once after


def test_restore_without_a_verified_backup_fails_naming_what_is_missing(
        tmp_path: Path, agent: FakeAgent, receiver: FakeReceiver) -> None:
    with pytest.raises(RunbookError, match=r"operation 2 \(restore_backup redis\+milvus\) "
                                           r"failed: no verified backup to restore"):
        RunbookRun(_ctx(tmp_path, FakeStack()), "data_corruption").run()


def test_an_unknown_runbook_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"no runbook 'hihg_load' in the config; runbooks: "
                                            r"api_error, data_corruption, high_load"):
        RunbookRun(_ctx(tmp_path, FakeStack()), "hihg_load")
