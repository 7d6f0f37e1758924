"""The seed's operations without servers: logrotate on real files (the Debian binary),
the rotation operation and step against a fake stack and probe, model_update's refusals,
and the cost-control checks' parts. Real stacks: tests/integration/test_operations.py."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agentverify import agent_ops
from agentverify.config import load_config, with_overrides
from agentverify.contract import AGENTVERIFY_KEY_PREFIX
from agentverify.cost import LedgerDelta
from agentverify.errors import AgentOpError, ConfigError, ScenarioError
from agentverify.logrotate import config_text, count_request_ids, log_files, rotate
from agentverify.scenarios.model import load_scenario_file
from agentverify.scenarios.probe import ProbeReport, ProbeSample
from agentverify.scenarios.runner import ScenarioContext

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "support-agent" / "agentverify.yaml"


def _lines(path: Path, *ids: str) -> None:
    with path.open("a") as f:
        for i in ids:
            f.write(json.dumps({"request_id": i, "status": 200}) + "\n")


# --------------------------------------------------------------------------- logrotate


def test_logrotate_renames_or_copies_and_truncates(tmp_path: Path) -> None:
    log = tmp_path / "data" / "agent.log"
    log.parent.mkdir()
    _lines(log, "a", "b")
    done = rotate([log], mode="rename", workdir=tmp_path / "work")
    assert done.rotated == (log.with_name("agent.log.1"),) and not log.exists()  # nocreate
    assert "nocreate" in (tmp_path / "work" / "logrotate.conf").read_text()
    _lines(log, "c")                                  # the agent reopened: a new file
    rotate([log], mode="copytruncate", workdir=tmp_path / "work")
    assert log.stat().st_size == 0                    # the same file, emptied
    assert [p.name for p in log_files(log)] == ["agent.log.2", "agent.log.1", "agent.log"]
    count = count_request_ids(log_files(log), fmt="json", field="request_id")
    assert count.ids == {"a": 1, "b": 1, "c": 1} and count.lines == 3


def test_logrotate_problems_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(AgentOpError, match="no log to rotate at .*missing.log"):
        rotate([tmp_path / "missing.log"], mode="rename", workdir=tmp_path)
    # logrotate refuses a file in a directory anyone may write (it says how to fix it)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    _lines(shared / "agent.log", "a")
    with pytest.raises(AgentOpError, match=r"logrotate \(rename\) of .* failed .*insecure"):
        rotate([shared / "agent.log"], mode="rename", workdir=tmp_path / "work")


def test_config_quotes_paths_and_counts_ids_of_every_format(tmp_path: Path) -> None:
    text = config_text([Path("/d/a b.log"), Path("/e/agent.log")], "copytruncate")
    assert text.startswith('"/d/a b.log" "/e/agent.log" {') and "copytruncate" in text
    log = tmp_path / "agent.log"
    log.write_text('{"http": {"id": "x1"}}\n\x00\x00{"http": {"id": "x2"}}\nnot json\n'
                   '{"http": {}}\n\n')
    count = count_request_ids([log], fmt="json", field="http.id")
    assert (count.ids, count.lines, count.unreadable) == ({"x1": 1, "x2": 1}, 4, 2)
    log.write_text("GET /chat 200 id=x1\nPOST /chat x2 x1\n")
    assert count_request_ids([log], fmt="text", field="-", wanted={"x1", "x3"}).ids == {"x1": 2}


# --------------------------------------------------------------------------- rotate_logs


@dataclass
class _Replica:
    instance: str


@dataclass
class _Run:
    run_dir: Path


@dataclass
class LogStack:
    """What rotate_logs uses of a Stack: replicas, their logs, signals, the run dir."""

    config: Any
    root: Path
    signals: list[tuple[str, int]] = field(default_factory=list)
    replicas: list[_Replica] = field(default_factory=lambda: [_Replica("agent-0"),
                                                             _Replica("agent-1")])

    def __post_init__(self) -> None:
        self.agent_config = self.config
        self.run = _Run(self.root / "run")
        for r in self.replicas:
            self.agent_log(r.instance).parent.mkdir(parents=True, exist_ok=True)

    def agent_log(self, name: str) -> Path:
        return self.root / name / "data" / "agent.log"

    def signal(self, name: str, sig: int) -> None:
        self.signals.append((name, sig))


def test_rotate_logs_renames_then_signals_each_replica_or_copies_without_a_signal(
        tmp_path: Path) -> None:
    stack = LogStack(load_config(EXAMPLE, env="dev"), tmp_path)
    for r in stack.replicas:
        _lines(stack.agent_log(r.instance), f"{r.instance}-1")
    done = agent_ops.rotate_logs(stack)
    assert (done.operation, done.method) == ("rotate_logs", "logrotate")
    assert stack.signals == [("agent-0", signal.SIGHUP), ("agent-1", signal.SIGHUP)]
    assert all(stack.agent_log(r.instance).with_name("agent.log.1").is_file()
               for r in stack.replicas)
    # an agent that cannot reopen its file: copied and truncated, no signal
    quiet = LogStack(with_overrides(stack.config, {"stack.agent.contract.logs.reopen_signal": None}),
                     tmp_path / "quiet")
    for r in quiet.replicas:
        _lines(quiet.agent_log(r.instance), "x")
    assert agent_ops.rotate_logs(quiet).method == "copytruncate" and quiet.signals == []
    # a replica that wrote nothing is named
    silent = LogStack(stack.config, tmp_path / "silent")
    _lines(silent.agent_log("agent-0"), "y")
    with pytest.raises(AgentOpError, match=r"no request log written by agent-1 \("):
        agent_ops.rotate_logs(silent)


class FakeProbe:
    """A probe whose samples are given; ``elapsed`` moves with the waits."""

    def __init__(self, samples: list[ProbeSample]) -> None:
        self.samples = samples
        self.elapsed = 0.0

    def snapshot(self) -> ProbeReport:
        return ProbeReport(self.samples, self.elapsed, 10.0)

    def wait_answered(self, until: float, timeout: float | None = None) -> bool:
        return True


def _ctx(stack: Any, tmp_path: Path) -> ScenarioContext:
    ctx = ScenarioContext(stack, stack.config, env="dev", report_dir=tmp_path,
                          say=lambda line: None)
    ctx.wait = lambda seconds, reason: setattr(  # type: ignore[method-assign]
        ctx.state["probe"], "elapsed", ctx.state["probe"].elapsed + seconds)
    return ctx


def test_the_rotation_step_counts_lost_and_doubled_requests(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentverify.scenarios import operations

    stack = LogStack(load_config(EXAMPLE, env="dev"), tmp_path)
    ids = [f"r{i}" for i in range(6)]
    samples = [ProbeSample(0.5 * i, 0.01, 200, "v1", "agent-0", 1, rid)
               for i, rid in enumerate(ids)]
    samples.append(ProbeSample(0.6, 0.01, "ConnectError", None, None))  # no reply, no id
    _lines(stack.agent_log("agent-0"), "r0", "r1", "r2")

    stuck = False

    def rotate_and_write(s: Any) -> agent_ops.AgentOpResult:
        for r in s.replicas:
            path = s.agent_log(r.instance)
            if path.exists():
                path.rename(path.with_name("agent.log.1"))
        _lines(stack.agent_log("agent-0"), "r2", "r3")   # r2 twice, r4 and r5 never
        if not stuck:
            _lines(stack.agent_log("agent-1"), "metrics-scrape")
        return agent_ops.AgentOpResult("rotate_logs", "logrotate", "", 0.01)

    monkeypatch.setattr(operations.agent_ops, "rotate_logs", rotate_and_write)
    ctx = _ctx(stack, tmp_path)
    ctx.state["probe"] = FakeProbe(samples)
    params = operations.RotateLogsParams(before_s=1, after_s=2)
    facts = operations.rotate_logs(ctx, params)
    assert (facts["log_requests_checked"], facts["log_requests_lost"],
            facts["log_requests_doubled"]) == (6, 2, 1)
    assert facts["log_reopened"] is True and facts["log_rotated_replicas"] == 2
    # a replica that keeps writing into the renamed file has no new one
    stuck = True
    assert operations.rotate_logs(ctx, params)["log_reopened"] is False


def test_the_operation_steps_need_a_probe_and_a_new_model(tmp_path: Path) -> None:
    from agentverify.scenarios import operations

    stack = LogStack(load_config(EXAMPLE, env="dev"), tmp_path)
    ctx = _ctx(stack, tmp_path)
    with pytest.raises(ScenarioError, match="start a probe before it"):
        operations.rotate_logs(ctx, operations.RotateLogsParams())
    ctx.state["probe"] = FakeProbe([])
    with pytest.raises(ScenarioError, match="the agent already runs gpt-4o-mini"):
        operations.model_update(ctx, operations.ModelUpdateParams(model_name="gpt-4o-mini"))
    no_log = LogStack(with_overrides(stack.config, {"stack.agent.variables.log_file": None}),
                      tmp_path / "nolog")
    ctx2 = _ctx(no_log, tmp_path)
    ctx2.state["probe"] = FakeProbe([])
    facts = operations.rotate_logs(ctx2, operations.RotateLogsParams())
    assert "log_file is null" in str(facts["log_requests_lost"].reason)


# --------------------------------------------------------------------------- cost controls


def test_calls_are_priced_and_unbounded_ones_counted() -> None:
    delta = LedgerDelta.of_calls([
        {"endpoint": "chat", "model": "gpt-4o", "status": 200, "max_tokens": None,
         "prompt_tokens": 100, "completion_tokens": 900},
        {"endpoint": "chat", "model": "gpt-4o", "status": 500, "max_tokens": None},
        {"endpoint": "chat", "model": "gpt-4o", "status": 200, "max_tokens": 512,
         "prompt_tokens": 10, "completion_tokens": 20},
        {"endpoint": "embeddings", "model": "emb", "status": 200, "embedding_tokens": 7}])
    gpt = delta.models["gpt-4o"]
    assert (gpt.chat_requests, gpt.errors, gpt.prompt_tokens, gpt.completion_tokens) == \
        (2, 1, 110, 920)
    assert delta.total("calls_without_max_tokens") == 2 and delta.total("embedding_tokens") == 7


def test_agentverify_keeps_its_own_redis_namespace_out_of_the_agents() -> None:
    from agentverify.scenarios.backup_restore import SeedParams

    with pytest.raises(ConfigError, match="agentverify's own namespace"):
        load_config(overrides={"stack.agent.contract.cache_keys": ["agentverify:answer:*"]})
    with pytest.raises(ValueError, match="pattern"):
        SeedParams(prefix="agent:answer:")
    assert SeedParams().prefix.startswith(AGENTVERIFY_KEY_PREFIX)


def test_the_bundled_gate_ships_the_operations_and_the_cost_gates() -> None:
    ops = {s.name: s for s in load_scenario_file(REPO / "scenarios" / "operations.yaml")}
    assert set(ops) == {"model-update", "log-rotation", "rolling-restart"}
    for spec in ops.values():
        assert spec.steps[0].type == "probe_start" and spec.steps[-1].type == "probe_stop"
        assert spec.expect["failed_requests"] == "== 0"
    assert ops["model-update"].expect["calls_not_on_new_model"] == "== 0"
    assert ops["log-rotation"].expect["log_requests_lost"] == "== 0"
    assert [s.type for s in ops["rolling-restart"].steps][1] == "restart"
    (load,) = load_scenario_file(REPO / "scenarios" / "load.yaml")
    assert "cache_hygiene" in [s.type for s in load.steps]
    for gate in ("calls_without_max_tokens", "keys_without_ttl", "keys_over_ttl"):
        assert load.expect[gate] == "== 0"


def test_the_probe_keeps_each_replys_request_id_and_waits_for_what_it_sent() -> None:
    import threading
    import time

    import httpx

    from agentverify.contract import AgentContract
    from agentverify.scenarios.probe import Probe

    release = threading.Event()
    served = iter(range(10_000))

    def agent(request: httpx.Request) -> httpx.Response:
        n = next(served)
        if n == 3:
            release.wait(5)  # one slow request
        return httpx.Response(200, headers={"X-Request-Id": f"id-{n}", "X-Agent-Version": "v1"},
                              json={"answer": "a", "sources": [], "cached": False})

    probe = Probe("http://agent.test", rps=50, contract=AgentContract.default())
    probe._client = httpx.Client(transport=httpx.MockTransport(agent))
    probe.start()
    time.sleep(0.3)
    until = probe.elapsed
    assert probe.wait_answered(until, timeout=0.2) is False  # the slow one is still out
    release.set()
    assert probe.wait_answered(until, timeout=5) is True
    report = probe.stop()
    before = [s for s in report.samples if s.t < until]
    assert len(before) >= 10 and all(s.request_id and s.request_id.startswith("id-")
                                     for s in before)
    assert len({s.request_id for s in report.samples}) == report.requests


def test_a_probe_request_without_a_reply_keeps_the_id_it_was_sent_with() -> None:
    import time

    import httpx

    from agentverify.contract import AgentContract
    from agentverify.scenarios.probe import Probe

    sent: list[str] = []

    def agent(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["X-Request-Id"])
        if len(sent) % 2 == 0:
            raise httpx.ReadTimeout("no answer", request=request)
        return httpx.Response(200, headers={"X-Agent-Version": "v1"},  # echoes no id
                              json={"answer": "a", "sources": [], "cached": False})

    probe = Probe("http://agent.test", rps=50, contract=AgentContract.default())
    probe._client = httpx.Client(transport=httpx.MockTransport(agent))
    probe.start()
    time.sleep(0.3)
    report = probe.stop()
    assert report.failed >= 2 and len(set(sent)) == len(sent) == report.requests
    assert {s.sent_id for s in report.samples} == {s.log_id for s in report.samples} == set(sent)
    assert all(s.request_id is None for s in report.samples)  # no reply carried one
    assert all(i.startswith("probe-") for i in sent)
    failed = [s for s in report.samples if not s.ok]
    lines = report.failures(where={failed[0].sent_id: "logged by agent-1.g2"})
    assert lines[0] == (f"t={failed[0].t:.2f}s ReadTimeout (no version) "
                        f"{failed[0].sent_id}: logged by agent-1.g2")
    assert lines[1].endswith(f"ReadTimeout (no version) {failed[1].sent_id}")


def test_the_local_backend_signals_the_process_its_command_started(tmp_path: Path) -> None:
    import sys
    import time

    from agentverify.errors import StackError
    from agentverify.stack.local import LocalBackend
    from agentverify.stack.runstate import RunContext
    from agentverify.stack.spec import ServiceSpec

    script = ("import signal, sys, time, pathlib\n"
              "signal.signal(signal.SIGHUP, lambda *a: pathlib.Path('hup').write_text('1'))\n"
              "print('up', flush=True)\n"
              "time.sleep(30)\n")
    backend = LocalBackend()
    backend.open(RunContext.create("local", state_dir=tmp_path / "state"))
    spec = ServiceSpec(name="svc", role="job", image="-", command=(sys.executable, "-c", script))
    handle = backend.start(spec, "svc", peers={})
    try:
        deadline = time.monotonic() + 10
        while "up" not in backend.logs(handle) and time.monotonic() < deadline:
            time.sleep(0.05)
        backend.signal(handle, signal.SIGHUP)
        marker = handle.state.dirs.base / "hup"
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text() == "1" and backend.status(handle).running
    finally:
        backend.stop(handle, grace=1)
    with pytest.raises(StackError, match="svc is not running: cannot send it SIGHUP"):
        backend.signal(handle, signal.SIGHUP)


def test_failed_probe_requests_are_found_in_the_logs_of_the_instances_that_got_them(
        tmp_path: Path) -> None:
    from types import SimpleNamespace

    from agentverify.contract import AgentContract
    from agentverify.scenarios.probe import ProbeReport, ProbeSample
    from agentverify.scenarios.rolling_update import _where_logged

    old, new, broken = (tmp_path / n / "agent.log" for n in ("old", "new", "broken"))
    for path in (old, new):
        path.parent.mkdir()
    _lines(old, "probe-t-1", "probe-t-2")            # answered, and the slow one
    _lines(new, "probe-t-4")                         # a 500 of the new replica
    broken.parent.mkdir()
    broken.with_name("agent.log.1").mkdir()          # cannot be read: skipped, said
    said: list[str] = []
    logs = [("agent-0", old), ("agent-0.g2", new), ("agent-1", broken),
            ("agent-2", tmp_path / "none" / "agent.log")]   # never written: not searched
    ctx = SimpleNamespace(contract=AgentContract.default(), say=said.append,
                          stack=SimpleNamespace(agent_logs=lambda: logs))

    def sample(n: int, status: int | str, echoed: bool = True) -> ProbeSample:
        sent = f"probe-t-{n}"
        return ProbeSample(n * 0.1, 0.01, status, None, None, 1,
                           sent if echoed and isinstance(status, int) else None, sent)

    report = ProbeReport([sample(1, 200), sample(2, "ReadTimeout"), sample(3, "ReadTimeout"),
                          sample(4, 500)], duration_s=1.0, rps_target=4)
    assert _where_logged(ctx, report) == {"probe-t-2": "logged by agent-0",
                                          "probe-t-3": "in no agent's log",
                                          "probe-t-4": "logged by agent-0.g2"}
    assert len(said) == 1 and said[0].startswith("  agent-1's request log was not searched: ")
    # an agent that replaces the ids it is sent: its logs cannot tell, so nothing is claimed
    said.clear()
    replaced = ProbeReport([ProbeSample(0.1, 0.01, 200, None, None, 1, "own-id", "probe-t-1"),
                            sample(2, "ReadTimeout")], duration_s=1.0, rps_target=2)
    assert _where_logged(ctx, replaced) == {}
    assert said == ["  the failed requests cannot be looked for in the agents' logs: the agent "
                    "replaces the X-Request-Id it is sent"]
    # no log anywhere: nothing to say either
    ctx.stack = SimpleNamespace(agent_logs=lambda: [("agent-2", tmp_path / "none" / "agent.log")])
    assert _where_logged(ctx, report) == {}


def test_probe_start_gives_up_on_a_request_after_its_timeout(tmp_path: Path) -> None:
    """A request slower than ``timeout_s`` counts as failed; one within it does not."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from agentverify.scenarios.rolling_update import (
        PROBE_KEY,
        ProbeStartParams,
        probe_start,
    )

    class SlowAgent(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(0.4)
            body = b'{"answer": "a", "sources": [], "cached": false}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowAgent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stack = LogStack(load_config(EXAMPLE, env="dev"), tmp_path)
    stack.lb_url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        for timeout_s, failing in ((0.1, True), (5.0, False)):
            ctx = ScenarioContext(stack, stack.config, env="dev", report_dir=tmp_path,
                                  say=lambda line: None)
            probe_start(ctx, ProbeStartParams(rps=20, timeout_s=timeout_s))
            time.sleep(0.3)
            report = ctx.state[PROBE_KEY].stop()
            assert report.requests >= 3
            assert (report.failed == report.requests) is failing, (timeout_s, report.failures())
            assert (report.failed == 0) is not failing
    finally:
        server.shutdown()
        server.server_close()
