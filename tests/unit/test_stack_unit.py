"""The Stack's own logic against an in-memory backend: order, failure clean-up, rollouts,
scaling, reaping. (What really runs is tested in tests/integration on real backends.)"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agentverify.config import load_config
from agentverify.errors import BackupRestoreError, RollbackError, ServiceStartError, StackError
from agentverify.stack.spec import Port, ServiceSpec, StackSpec
from agentverify.stack.stack import ProgressEvent, Stack
from tests.unit.fakes import FakeBackend

AGENT = ServiceSpec(name="agent", role="agent", image="x", command=("agent",),
                    ports=(Port("http", 8000),), depends_on=("redis", "llm", "ingest"),
                    replicas=3, version="v1")


def _spec() -> StackSpec:
    return StackSpec(services=(
        ServiceSpec(name="llm", role="llm", image="x", command=("llm",), ports=(Port("http", 8080),)),
        ServiceSpec(name="redis", role="cache", image="x", command=("redis",),
                    ports=(Port("redis", 6379, "redis"),), persistent=True),
        ServiceSpec(name="ingest", role="job", image="x", command=("ingest",), kind="job",
                    depends_on=("llm",)),
        AGENT,
        ServiceSpec(name="prometheus", role="metrics", image="x", command=("prom",),
                    ports=(Port("http", 9090),), depends_on=("llm",),
                    files={"targets/agents.json": "[]"}),
    ), env_name="unit")


def _stack(tmp_path: Path, backend: FakeBackend | None = None,
           events: list[ProgressEvent] | None = None) -> Stack:
    sink = events.append if events is not None else None
    return Stack(_spec(), backend or FakeBackend(), state_dir=tmp_path / "state",
                 agent_factory=lambda v: replace(AGENT, version=v), progress=sink)


def test_up_starts_dependencies_first_and_down_stops_in_reverse(tmp_path: Path) -> None:
    backend = FakeBackend()
    stack = _stack(tmp_path, backend)
    with stack:
        started = backend.started()
        first_agent = min(started.index(f"agent-{i}.g1") for i in range(3))
        assert started.index("redis.g1") < first_agent and started.index("llm.g1") < first_agent
        assert ("run_job", "ingest") in backend.calls
        assert [r.instance for r in stack.replicas] == ["agent-0", "agent-1", "agent-2"]
        assert stack.versions == ["v1"] * 3
        assert set(stack.to_json()["services"]) == {"llm", "redis", "prometheus", "agent-0",
                                                    "agent-1", "agent-2"}
        targets = json.loads(stack.service("prometheus").state.files["targets/agents.json"])
        assert [g["labels"]["replica"] for g in targets] == ["agent-0", "agent-1", "agent-2"]
    stopped = backend.stopped()
    assert stopped.index("agent-0.g1") < stopped.index("redis.g1")
    assert set(stopped) == {"llm.g1", "redis.g1", "prometheus.g1", "agent-0.g1", "agent-1.g1",
                            "agent-2.g1"}
    assert backend.closed
    calls = len(backend.calls)
    stack.down()  # idempotent: nothing more is stopped
    assert [c for c in backend.calls[calls:] if c[0] in ("stop", "kill")] == []


def test_teardown_stops_what_an_agent_uses_after_the_agents_and_the_rest_beside_them() -> None:
    # ingest uses llm; the agent uses redis, llm and ingest; prometheus uses llm
    assert _spec().stop_ranks() == {"agent": 0, "prometheus": 0, "ingest": 1, "redis": 1,
                                    "llm": 1}
    # what no agent uses (the agent's own users, the monitoring) goes with the agents
    seed = Stack.from_config(load_config(None, "dev"), backend=FakeBackend()).spec
    ranks = seed.stop_ranks()
    assert {n for n, r in ranks.items() if r == 1} == {"toxiproxy", "redis", "milvus", "llm"}
    assert ranks["agent"] == ranks["lb"] == ranks["prometheus"] == ranks["alertmanager"] == 0
    # a stack without agents (a restore target) stops at once
    assert set(_spec().subset(["redis", "prometheus"]).stop_ranks().values()) == {0}


def test_a_failed_start_stops_everything_already_started(tmp_path: Path) -> None:
    backend = FakeBackend(fail_start={"agent-1"})
    stack = _stack(tmp_path, backend)
    with pytest.raises(ServiceStartError, match="agent-1: fake start failure"):
        with stack:
            pass
    assert set(backend.started()) - {"agent-1.g1"} <= set(backend.stopped())
    assert stack.instances() == []
    assert not stack.is_up


def test_up_reaps_what_killed_runs_left_through_the_backend(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    backend = FakeBackend(leftovers=["old-run/av-x (container)"])
    with _stack(tmp_path, backend, events):
        assert backend.calls[0] == ("reap_stale", "")
    assert any(e.state == "info" and e.instance == "old-run/av-x (container)" for e in events)


def test_rolling_update_replaces_one_replica_at_a_time(tmp_path: Path) -> None:
    backend = FakeBackend()
    with _stack(tmp_path, backend) as stack:
        rollout = stack.rolling_update("v2")
        assert rollout.completed and len(rollout.steps) == 3
        assert stack.versions == ["v2"] * 3
        order = [c for c in backend.calls if c[0] in ("start", "stop")
                 and c[1].startswith("agent-")]
        # each new generation is started before its predecessor is stopped; a replaced one
        # may still be stopping while the next starts (maxSurge 1), never two of them
        for i in range(3):
            assert order.index(("start", f"agent-{i}.g2")) < order.index(("stop", f"agent-{i}.g1"))
            if i >= 2:
                assert order.index(("stop", f"agent-{i - 2}.g1")) < \
                    order.index(("start", f"agent-{i}.g2"))
        assert [s.instance for s in rollout.steps] == ["agent-0", "agent-1", "agent-2"]


def test_an_after_each_reason_stops_the_rollout_and_rollback_restores(tmp_path: Path) -> None:
    with _stack(tmp_path) as stack:
        seen: list[str] = []

        def bake(new) -> str | None:
            seen.append(new.instance)
            return "agent-0 answered errors" if new.instance == "agent-0" else None

        rollout = stack.rolling_update("v3", after_each=bake)
        assert not rollout.completed and rollout.failure == "agent-0 answered errors"
        assert seen == ["agent-0"] and stack.versions == ["v3", "v1", "v1"]
        back = stack.rollback("v1")
        assert len(back.steps) == 1 and stack.versions == ["v1"] * 3


def test_a_replica_that_never_starts_fails_the_rollout_and_the_rollback(tmp_path: Path) -> None:
    backend = FakeBackend()
    with _stack(tmp_path, backend) as stack:
        backend.fail_start = {"agent-0"}
        rollout = stack.rolling_update("v2")
        assert rollout.failure and "agent-0 at v2 did not become healthy" in rollout.failure
        assert stack.versions == ["v1"] * 3
        with pytest.raises(RollbackError, match="rollback to v9 failed"):
            stack.rollback("v9")


def test_scale_out_and_in_follows_in_routing_targets(tmp_path: Path) -> None:
    with _stack(tmp_path) as stack:
        stack.scale(5)
        assert [r.instance for r in stack.replicas] == [f"agent-{i}" for i in range(5)]
        stack.scale(2)
        assert [r.instance for r in stack.replicas] == ["agent-0", "agent-1"]
        targets = json.loads(stack.service("prometheus").state.files["targets/agents.json"])
        assert len(targets) == 2
        with pytest.raises(Exception, match="below 1 replica"):
            stack.scale(0)


def test_scale_in_stops_the_dropped_replicas_side_by_side_and_reports_a_failed_stop(
        tmp_path: Path) -> None:
    import threading

    from agentverify.errors import StackError

    # each stop of a dropped replica waits for the other two: one after another, the
    # first would time out
    dropped = {"agent-2", "agent-3", "agent-4"}
    barrier = threading.Barrier(len(dropped), timeout=5)

    def on_stop(handle) -> None:
        if handle.instance in dropped:
            barrier.wait()

    backend = FakeBackend(fail_stop={"agent-3"}, on_stop=on_stop)
    with _stack(tmp_path, backend) as stack:
        stack.scale(5)
        with pytest.raises(StackError, match="agent-3: fake stop failure"):
            stack.scale(2, drain=False)
        assert [r.instance for r in stack.replicas] == ["agent-0", "agent-1"]
        assert {f"{i}.g1" for i in dropped} <= set(backend.stopped())
        assert not barrier.broken
        targets = json.loads(stack.service("prometheus").state.files["targets/agents.json"])
        assert [g["labels"]["replica"] for g in targets] == ["agent-0", "agent-1"]
        # the replica whose stop failed is still the stack's: the teardown stops it again
        dropped.clear()
        backend.fail_stop.clear()
    assert backend.stopped().count("agent-3.g1") == 2


def test_restart_keeps_the_service_serving(tmp_path: Path) -> None:
    backend = FakeBackend()
    with _stack(tmp_path, backend) as stack:
        before = stack.service("redis")
        after = stack.restart("redis")
        assert after is not before and stack.service("redis") is after
        assert after.state.ports == before.state.ports
        assert after in stack.instances() and before not in stack.instances()


def test_signal_reaches_the_named_instance_and_a_replica_has_a_data_path_and_log(
        tmp_path: Path) -> None:
    import signal

    from agentverify.errors import StackError

    backend = FakeBackend()
    with _stack(tmp_path, backend) as stack:
        assert stack.signal("agent-1", signal.SIGHUP) is stack.replicas[1].handle
        assert ("signal", f"agent-1.g1: {int(signal.SIGHUP)}") in backend.calls
        stack.signal("redis", signal.SIGUSR1)
        assert stack.data_path("agent-2") == stack.replicas[2].handle.state.dirs.data
        assert stack.agent_log("agent-2") == stack.data_path("agent-2") / "agent.log"
        stack.rolling_update("v2")  # a new generation: its own directory
        assert stack.agent_log("agent-2").parent.parent.name == "agent-2.g2"
        with pytest.raises(StackError, match="not an agent replica"):
            stack.agent_log("redis")
        stack.kill("agent-0")
        with pytest.raises(StackError, match="not running"):
            stack.signal("agent-0", signal.SIGHUP)
        with pytest.raises(StackError, match="not running"):
            stack.signal("agent-9", signal.SIGHUP)


def test_a_rolling_restart_replaces_every_replica_on_its_version(tmp_path: Path) -> None:
    backend = FakeBackend()
    with _stack(tmp_path, backend) as stack:
        rollout = stack.restart_agents()
        assert rollout.completed and len(rollout.steps) == 3
        assert stack.versions == ["v1"] * 3
        assert [r.handle.generation for r in stack.replicas] == [2, 2, 2]


def test_reconfigure_restarts_every_replica_on_the_new_config(tmp_path: Path) -> None:
    backend = FakeBackend()
    with _stack(tmp_path, backend) as stack:
        stack._agent_spec_for = lambda cfg, v: replace(AGENT, version=v,
                                                       files={"config.yaml": str(cfg)})
        rollout = stack.reconfigure_agents("rate limit 5/s")
        assert rollout.completed and len(rollout.steps) == 3
        assert stack.agent_config == "rate limit 5/s"
        assert [r.handle.spec.files["config.yaml"] for r in stack.replicas] == \
            ["rate limit 5/s"] * 3
        # a later version change keeps the new configuration
        stack.rolling_update("v2")
        assert {r.handle.spec.files["config.yaml"] for r in stack.replicas} == {"rate limit 5/s"}
        # and a replica is given its own id in the agent's replica variable
        assert replace(AGENT, replica_env=("INSTANCE_ID",)).for_replica("agent-2").env == \
            {"INSTANCE_ID": "agent-2"}


def test_reconfigure_at_once_starts_every_new_replica_before_stopping_an_old_one(
        tmp_path: Path) -> None:
    backend = FakeBackend()
    with _stack(tmp_path, backend) as stack:
        stack._agent_spec_for = lambda cfg, v: replace(AGENT, version=v,
                                                       files={"config.yaml": str(cfg)})
        rollout = stack.reconfigure_agents("baseline", version="v2", at_once=True)
        assert rollout.completed and rollout.version == "v2"
        assert stack.versions == ["v2"] * 3
        assert [r.handle.spec.files["config.yaml"] for r in stack.replicas] == ["baseline"] * 3
        # blue/green: the three new generations were started before any old one stopped
        agent_calls = [(kind, name) for kind, name in backend.calls
                       if kind in ("start", "stop") and name.startswith("agent-")]
        first_stop = next(i for i, (kind, _n) in enumerate(agent_calls) if kind == "stop")
        assert {n for k, n in agent_calls[:first_stop] if k == "start"} >= \
            {"agent-0.g2", "agent-1.g2", "agent-2.g2"}


def test_a_stack_not_made_from_a_config_cannot_be_reconfigured(tmp_path: Path) -> None:
    from agentverify.errors import StackError

    with _stack(tmp_path) as stack, pytest.raises(StackError, match="not made from a config"):
        stack.reconfigure_agents(object())


class _KilledOnStop(FakeBackend):
    """A backend whose agent replicas had to be killed (no clean exit on SIGTERM)."""

    def stop(self, handle, grace=None):  # type: ignore[no-untyped-def]
        super().stop(handle, grace)
        if handle.spec.role == "agent":
            handle.state.exit_code = -9


def test_a_replica_killed_after_its_grace_is_an_unclean_stop(tmp_path: Path) -> None:
    with _stack(tmp_path, _KilledOnStop()) as stack:
        rollout = stack.rolling_update("v2")
        assert rollout.completed and len(rollout.unclean_stops) == 3
        assert rollout.unclean_stops[0].exit_code == -9
    with _stack(tmp_path / "clean") as stack:  # exit 0: clean
        assert stack.rolling_update("v2").unclean_stops == []


@pytest.mark.parametrize(("code", "clean"), [(0, True), (-15, True), (143, True), (None, True),
                                            (-9, False), (137, False), (1, False)])
def test_ending_by_sigterm_is_a_clean_stop(code: int | None, clean: bool) -> None:
    from agentverify.stack.wait import ServiceStatus

    assert ServiceStatus(False, code).stopped_cleanly is clean


def test_the_deregistration_delay_is_waited_only_where_traffic_can_be_in_flight(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _stack(tmp_path) as stack:
        drained: list[int] = []
        real_drain = stack._drain
        monkeypatch.setattr(stack, "_drain", lambda **kw: drained.append(
            len(stack.replicas)) or real_drain(**kw))
        stack.scale(5)
        stack.scale(3)                                   # traffic may be in flight: drained
        assert drained == [3]
        stack.promote(stack.start_standby("v2"))
        stack._agent_spec_for = lambda cfg, v: replace(AGENT, version=v)
        stack.reconfigure_agents("changed", at_once=True)
        assert drained == [3, 3, 3]
        # between scenarios nothing is sent: the baseline is put back without the delay
        stack.scale(5)
        stack.scale(3, drain=False)
        stack.promote(stack.start_standby("v1"), drain=False)
        stack.reconfigure_agents("baseline", at_once=True, drain=False)
        assert drained == [3, 3, 3]
        assert stack.versions == ["v1"] * 3 and len(stack.replicas) == 3


def test_an_interrupt_in_one_stop_still_lets_every_other_stop_run() -> None:
    from agentverify.stack.stack import _side_by_side

    done: list[int] = []

    def stop(i: int) -> None:
        if i == 1:
            raise KeyboardInterrupt
        if i == 2:
            raise RuntimeError("lost track of it")
        done.append(i)

    with pytest.raises(KeyboardInterrupt):
        _side_by_side(stop, range(4))
    assert sorted(done) == [0, 3]
    assert [str(e) for e in _side_by_side(stop, [0, 2, 3])] == ["lost track of it"]


def test_prepared_work_runs_before_the_first_start_and_before_the_dependents(
        tmp_path: Path) -> None:
    backend = FakeBackend()
    stack = _stack(tmp_path, backend)
    seen: list[tuple[str, Any]] = []

    def fill(directory: Path) -> None:
        seen.append(("data", list(backend.started())))
        (directory / "dump.rdb").write_bytes(b"REDIS")

    def ready(handle: Any) -> None:
        # ready and serving; nothing that uses it has started
        seen.append(("ready", [s for s in backend.started() if s.startswith("agent")]))
        assert (stack.data_path("redis") / "dump.rdb").read_bytes() == b"REDIS"

    stack.prepare("redis", data=fill, ready=ready)
    with stack:
        assert [kind for kind, _ in seen] == ["data", "ready"]
        assert "redis.g1" not in seen[0][1]  # the file was there before redis started
        assert seen[1][1] == []
        assert (stack.data_path("redis") / "dump.rdb").stat().st_mode & 0o444 == 0o444
        assert 0.0 < stack.prepared_seconds < stack.up_seconds
        with pytest.raises(StackError, match="up already"):
            stack.prepare("redis", data=fill)
    for name, why in (("agent", "the agent's replicas start on what the services hold"),
                      ("nope", "no such service")):
        with pytest.raises(StackError, match=f"{why}; the stack's services: llm, redis, "
                                             f"ingest, prometheus"):
            _stack(tmp_path).prepare(name, ready=ready)


def test_prepared_work_that_fails_fails_the_start_up_and_stops_everything(
        tmp_path: Path) -> None:
    backend = FakeBackend()
    stack = _stack(tmp_path, backend)

    def broken(handle: Any) -> None:
        raise BackupRestoreError("milvus at x: restore: collection exists")

    stack.prepare("redis", ready=broken)
    with pytest.raises(BackupRestoreError, match="collection exists"):
        with stack:
            pass
    assert not [s for s in backend.started() if s.startswith("agent")]
    assert set(backend.started()) <= set(backend.stopped())


def test_a_stack_without_jobs_does_not_wait_for_them() -> None:
    spec = _spec().without_jobs()
    assert [s.name for s in spec.services] == ["llm", "redis", "agent", "prometheus"]
    assert spec["agent"].depends_on == ("redis", "llm")
    assert _spec().subset(["agent"]).without_jobs()["agent"].depends_on == ("redis", "llm")


def test_replaced_replicas_stop_in_the_background_and_settle_waits_for_them(
        tmp_path: Path) -> None:
    release = threading.Event()
    stopping: list[str] = []

    def on_stop(handle: Any) -> None:
        if handle.spec.role == "agent" and handle.generation == 1:
            stopping.append(handle.key)
            assert release.wait(10), "the test never let the stops end"

    backend = FakeBackend(on_stop=on_stop, fail_stop=set())
    with _stack(tmp_path, backend) as stack:
        old = [r.handle for r in stack.replicas]
        stack.promote(stack.start_standby("v2"), drain=False, background=True)
        # back at the switch while the replaced ones still stop (a promote that waited
        # for them would never get here: they stop only once released below)
        assert stack.versions == ["v2"] * 3
        assert all(h.state.running for h in old)
        assert not {h.key for h in old} & {r.handle.key for r in stack.replicas}
        release.set()
        stack.settle()
        assert sorted(stopping) == sorted(h.key for h in old)
        assert not any(h.state.running for h in old)
        assert not {h.key for h in old} & {h.key for h in stack.instances()}
        stack.settle()  # nothing left to wait for

        # a stop that fails is raised by settle; the teardown stops that replica again
        backend.fail_stop.add("agent-1")
        stack.promote(stack.start_standby("v1"), drain=False, background=True)
        with pytest.raises(StackError, match="agent-1: fake stop failure"):
            stack.settle()
        failed = [h for h in stack.instances() if h.instance == "agent-1" and h.generation == 2]
        assert len(failed) == 1
        backend.fail_stop.clear()
    stopped = backend.stopped()
    assert stopped.count(failed[0].key) == 2
    assert set(backend.started()) <= set(stopped)


def test_the_teardown_waits_for_replicas_still_stopping(tmp_path: Path) -> None:
    release = threading.Event()

    def on_stop(handle: Any) -> None:
        if handle.spec.role == "agent" and handle.generation == 1:
            release.wait(10)

    backend = FakeBackend(on_stop=on_stop)
    stack = _stack(tmp_path, backend)
    with stack:
        old = [r.handle.key for r in stack.replicas]
        stack.promote(stack.start_standby("v2"), drain=False, background=True)
        threading.Timer(0.2, release.set).start()
    stopped = backend.stopped()
    # each replaced replica stopped once (not again by the teardown), before the rest
    assert all(stopped.count(key) == 1 for key in old)
    assert set(backend.started()) <= set(stopped)
