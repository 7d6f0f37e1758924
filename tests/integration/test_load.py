"""Load rehearsals on the real stack: Locust in a child process, through nginx.

The short load runs once per backend on the shared staging stack (``stack`` fixture); the
rest, whose subject is the load engine and the gates and not where the stack runs, on the
local one (``LOCAL_ONLY``); the ``max_tokens`` one needs a stack of its own whose agent has
a small ``model.max_tokens``.
Loads are short and paced; the LLM is the stack's stub, so "dollars" are computed from
its exact ledger at the configured prices, and nothing leaves this machine.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentverify.load.driver import LoadDriver
from agentverify.load.plan import LoadPlan
from agentverify.load.stats import Snapshot
from agentverify.load.steps import LOAD_FACTS, CacheCostParams, LoadParams, cache_cost, load
from agentverify.scenarios.cost_controls import MaxTokensParams, RateLimitParams, max_tokens, rate_limit
from agentverify.scenarios.model import load_scenario_file
from agentverify.scenarios.runner import ScenarioContext
from tests.integration.conftest import LOCAL_ONLY

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# paced users: the figures stay those of a healthy stack on a 2-core machine
GENTLE = {"users": 4, "spawn_rate": 8.0, "user_rps": 5.0}


@contextlib.contextmanager
def scenario_context(session: Any, stack: Any, report_dir: Path) -> Iterator[ScenarioContext]:
    # a fresh stack carries its own config (e.g. another model.max_tokens)
    config = getattr(stack, "config", None) or session.config
    ctx = ScenarioContext(stack, config, env=session.env, report_dir=report_dir,
                          say=lambda line: print(f"agentverify: {line}"),
                          backend=session.backend_name)
    try:
        yield ctx
    finally:
        errors = ctx.run_cleanups()
        ctx.close()
        assert not errors


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The process group of every load child started during the test."""
    seen: list[int] = []
    original = LoadDriver._stop_group

    def spy(self: LoadDriver) -> None:
        if self._proc is not None:
            seen.append(self._proc.pid)
        original(self)

    monkeypatch.setattr(LoadDriver, "_stop_group", spy)
    return seen


@pytest.fixture(scope="module")
def short_run(av_session: Any, stack: Any, tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, Any]:
    """A short load through nginx, run as a scenario file, and its results.json entry."""
    scenarios = tmp_path_factory.mktemp("scenarios") / "scenarios"
    scenarios.mkdir()
    path = scenarios / "short-load.yaml"
    path.write_text(
        "name: short-load\n"
        "steps:\n"
        "  - load: {users: 4, spawn_rate: 8, user_rps: 6, duration_s: 6, repeat_ratio: 0.5}\n"
        "expect:\n"
        "  failures: '== 0'\n"
        "  tokens_agree: '== true'\n"
        "  slo_violations: '== 0'\n")
    (spec,) = load_scenario_file(path)
    result = av_session.run_scenario(spec)
    data = json.loads((av_session.report_dir / "results.json").read_text())
    entry = next(s for s in data["scenarios"] if s["name"] == "short-load")
    return {"result": result, "json": entry}


def test_short_load_through_nginx_reports_the_documented_facts(short_run: dict[str, Any]
                                                               ) -> None:
    result, entry = short_run["result"], short_run["json"]
    assert result.passed, [g.line() for g in result.gates] + [str(result.error)]
    facts = entry["facts"]
    assert set(LOAD_FACTS) <= set(facts)
    assert facts["requests"] >= 50 and facts["failures"] == 0
    assert 10 <= facts["rps"] <= 30  # 4 users paced at 6 requests/s (the SLO asks >= 20)
    assert 0 < facts["p50_ms"] <= facts["p95_ms"] <= facts["p99_ms"]
    assert facts["aborted"] is False and facts["abort_reason"] is None
    assert facts["users"] == 4 and facts["workers"] == 0
    assert facts["cost_usd"] > 0
    assert facts["cost_per_1k_requests_usd"] == pytest.approx(
        facts["cost_usd"] / facts["requests"] * 1000, rel=1e-3)
    assert 0.2 < facts["cache_hit_ratio"] < 0.9
    assert facts["max_completion_tokens"] <= facts["max_tokens_limit"]
    # what the step waited for on purpose: the load, then a scrape of its counters
    waits = entry["steps"][0]["waits"]
    assert waits["load"] == pytest.approx(facts["duration_s"], abs=0.05)
    assert 0 < waits["fresh scrape"] < 5  # at most a scrape interval (and a query)
    # the latency-over-time series the HTML report plots
    assert {"p95_ms", "rps"} <= set(result.series)
    assert len(result.series["rps"]) >= 4
    assert all(len(point) == 2 for point in result.series["p95_ms"])


def test_ledger_and_metric_agree_and_cache_hits_made_no_llm_call(short_run: dict[str, Any]
                                                                 ) -> None:
    facts = short_run["json"]["facts"]
    assert facts["ledger_tokens"] > 0
    assert facts["tokens_agree"] is True, facts["token_mismatch"]
    assert facts["token_mismatch_ratio"] <= 0.01
    assert abs(facts["metric_tokens"] - facts["ledger_tokens"]) <= 0.01 * facts["ledger_tokens"]
    assert facts["metric_cost_usd"] == pytest.approx(facts["cost_usd"], rel=0.01)
    assert facts["ledger_llm_requests"] == facts["cache_misses"]
    assert facts["cache_hit_llm_calls"] == 0
    assert facts["metric_cache_hit_ratio"] == pytest.approx(facts["cache_hit_ratio"], abs=0.05)


@LOCAL_ONLY
def test_distributed_mode_gives_the_same_shape(av_session: Any, stack: Any, tmp_path: Path,
                                               groups: list[int]) -> None:
    with scenario_context(av_session, stack, tmp_path) as ctx:
        facts = load(ctx, LoadParams(duration_s=5, workers=2, repeat_ratio=0.5, **GENTLE))
    assert set(facts) == set(LOAD_FACTS)
    assert facts["workers"] == 2 and facts["users"] == 4
    assert facts["requests"] >= 25 and facts["failures"] == 0
    assert facts["tokens_agree"] is True, facts["token_mismatch"]
    assert facts["cache_hit_llm_calls"] == 0
    assert ctx.series["rps"]
    # the child and both workers are gone
    assert groups and all(_group_members(g) == [] for g in groups)


@LOCAL_ONLY
def test_a_budget_breach_stops_the_load_early(av_session: Any, stack: Any,
                                              tmp_path: Path) -> None:
    with scenario_context(av_session, stack, tmp_path) as ctx:
        facts = load(ctx, LoadParams(duration_s=60, repeat_ratio=0.0, budget_usd=0.05,
                                     check_metrics=False, **GENTLE))
    assert set(facts) == set(LOAD_FACTS)
    assert facts["aborted"] is True and facts["budget_exceeded"] is True
    assert re.fullmatch(r"cost \$[\d.]+ > budget \$0\.05", facts["abort_reason"])
    assert facts["tokens_agree"] is None  # check_metrics: false measures no metric facts
    assert facts["duration_s"] < 20
    assert facts["cost_usd"] > 0.05 and facts["cost_violations"] >= 1


@LOCAL_ONLY
def test_an_slo_breach_aborts_the_load(av_session: Any, stack: Any, tmp_path: Path) -> None:
    with scenario_context(av_session, stack, tmp_path) as ctx:
        facts = load(ctx, LoadParams(duration_s=60, repeat_ratio=1.0, abort_on_fail=True,
                                     slo={"p95_ms": 1.0}, check_metrics=False,
                                     warmup_requests=30, users=4, spawn_rate=8.0))
    assert facts["aborted"] is True and facts["budget_exceeded"] is False
    assert re.fullmatch(r"p95_ms \d+ > 1", facts["abort_reason"]), facts["abort_reason"]
    assert facts["duration_s"] < 20
    assert facts["slo_violations"] >= 1 and "p95_ms" in facts["slo_violation"]


@LOCAL_ONLY
def test_the_rate_limit_answers_429_beyond_the_rate_and_is_restored(
        av_session: Any, stack: Any, tmp_path: Path) -> None:
    before = httpx.get(stack.lb_url + "/admin/rate-limit", timeout=10).json()
    with scenario_context(av_session, stack, tmp_path) as ctx:
        facts = rate_limit(ctx, RateLimitParams(requests_per_second=4, burst=4, requests=30))
    assert facts["rate_limit_429"] > 0
    assert 4 <= facts["rate_limit_allowed"] <= facts["rate_limit_allowed_max"]
    assert facts["rate_limit_excess"] == 0  # one bucket for the fleet, not one per replica
    assert facts["rate_limit_retry_after"] is True
    assert facts["rate_limit_other_client_status"] == 200
    assert facts["rate_limit_other_errors"] == 0
    assert facts["rate_limit_replicas_seen"] >= 2
    for replica in stack.replicas:  # the deferred restore reached every replica
        assert httpx.get(replica.url + "/admin/rate-limit", timeout=10).json() == before


@LOCAL_ONLY
def test_cost_per_request_falls_as_the_cache_hit_ratio_rises(av_session: Any, stack: Any,
                                                             tmp_path: Path) -> None:
    with scenario_context(av_session, stack, tmp_path) as ctx:
        facts = cache_cost(ctx, CacheCostParams(duration_s=3, users=3, low_repeat_ratio=0.2,
                                                high_repeat_ratio=0.9))
    assert facts["cache_cost_low_hit_ratio"] < facts["cache_cost_high_hit_ratio"]
    # a ~45-request sample of a 0.9 repeat ratio: 0.8 is two standard deviations low
    assert facts["cache_cost_high_hit_ratio"] >= 0.7
    assert facts["cache_cost_ratio"] < 0.5
    assert facts["cache_cost_hit_llm_calls"] == 0
    assert facts["cache_cost_failures"] == 0


@LOCAL_ONLY
def test_ctrl_c_stops_the_child_and_its_workers(stack: Any, groups: list[int]) -> None:
    plan = LoadPlan(host=stack.lb_url, users=2, spawn_rate=4, duration_s=60, workers=1,
                    prompts=("How do I reset my password?",), repeat_ratio=1.0, hot_set=1,
                    user_rps=2.0)

    def ctrl_c(snapshot: Snapshot) -> str | None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        LoadDriver(plan).run(abort_on=ctrl_c)
    assert groups and all(_group_members(g) == [] for g in groups)


@LOCAL_ONLY
def test_max_tokens_is_honoured(av_session: Any, tmp_path: Path) -> None:
    # the smallest stack whose agent cuts answers at 16 tokens
    with av_session.fresh_stack(**{"model.max_tokens": 16, "stack.replicas": 1,
                                   "stack.alertmanager": False}) as stack, \
            scenario_context(av_session, stack, tmp_path) as ctx:
        facts = max_tokens(ctx, MaxTokensParams(requests=8))
    assert facts["max_tokens_limit"] == 16
    assert facts["max_tokens_over_limit"] == 0
    assert facts["max_tokens_at_limit"] > 0  # answers really were cut at the limit
    assert facts["max_tokens_longest"] == 16
    assert facts["max_tokens_usage_matches_ledger"] is True



@LOCAL_ONLY
def test_a_users_own_locustfile_runs_instead_of_the_built_in_user(stack: Any,
                                                                   tmp_path: Path) -> None:
    locustfile = tmp_path / "my_locustfile.py"
    locustfile.write_text(
        "from locust import FastHttpUser, constant_throughput, task\n\n\n"
        "class HealthChecker(FastHttpUser):\n"
        "    wait_time = constant_throughput(10)\n\n"
        "    @task\n"
        "    def health(self):\n"
        "        self.client.get('/health')\n")
    plan = LoadPlan(host=stack.lb_url, users=2, spawn_rate=4, duration_s=3,
                    locustfile=str(locustfile))
    run = LoadDriver(plan).run()
    assert run.result.requests >= 20 and run.result.failures == 0
    assert run.result.status_codes == {"200": run.result.requests}
    assert run.result.stopped_by == "duration"
    assert run.result.cache_hits == run.result.cache_misses == 0  # no agent answers here



@pytest.fixture
def counting_server() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on 127.0.0.1 that answers 200 and keeps every path asked."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_started_child_gets_ready_and_sends_nothing_before_it_is_run(
        counting_server: tuple[str, list[str]], tmp_path: Path) -> None:
    """start() loads Locust and connects the workers ahead of the load; no request leaves
    before run(); a child closed without running ends with its workers."""
    host, seen = counting_server
    locustfile = tmp_path / "ping_locustfile.py"
    locustfile.write_text(
        "from locust import FastHttpUser, constant_throughput, task\n\n\n"
        "class Pinger(FastHttpUser):\n"
        "    wait_time = constant_throughput(5)\n\n"
        "    @task\n"
        "    def ping(self):\n"
        "        self.client.get('/ping')\n")
    plan = LoadPlan(host=host, users=2, spawn_rate=4, duration_s=2, workers=1,
                    locustfile=str(locustfile))
    ready = LoadDriver(plan, log_path=tmp_path / "ready.log").start()
    unused = LoadDriver(plan, log_path=tmp_path / "unused.log").start()
    groups = [d._proc.pid for d in (ready, unused) if d._proc is not None]
    try:
        # each child has loaded Locust and started its worker, and waits
        assert len(groups) == 2
        deadline = time.monotonic() + 60
        while any(len(_group_members(g)) < 2 for g in groups) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(len(_group_members(g)) >= 2 for g in groups), groups
        time.sleep(1.0)
        assert seen == []
        run = ready.run()
        assert run.result.requests >= 5 and run.result.failures == 0
        assert len(seen) == run.result.requests
    finally:
        unused.close()
    assert all(_group_members(g) == [] for g in groups)
    assert len(seen) == run.result.requests  # the unused child sent nothing
