"""The bundled scenarios, unchanged, against a second agent: examples/support-agent.

The example shares no code with agentverify: its own endpoint (``POST /v1/ask``), reply
shape, variable names, metric names, no admin endpoints, the official ``openai`` SDK. It
is described only by its ``agentverify.yaml`` (the contract, the variables, the metric
mapping). On the local backend it runs as ``python -m support_agent`` processes (it must
be installed in this environment: ``pip install -e examples/support-agent``, which
scripts/bootstrap does); on docker its image is built from its source by
``agentverify images build``, without a registry.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentverify import agent_ops
from agentverify.config import with_overrides
from agentverify.scenarios.model import load_scenario_file
from agentverify.scenarios.runner import ScenarioContext, run_scenario
from agentverify.session import AgentVerifySession
from tests.integration.conftest import require_backend

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "support-agent" / "agentverify.yaml"
SCENARIOS = REPO / "scenarios"


def require_example_installed() -> None:
    if importlib.util.find_spec("support_agent") is None:
        pytest.fail("the example agent is not installed in this environment: "
                    "pip install -e examples/support-agent (scripts/bootstrap does it)",
                    pytrace=False)


def session_for(backend: str, report_dir: Path, state_dir: Path) -> AgentVerifySession:
    require_backend(backend)
    require_example_installed()
    environ = {**os.environ, "AGENTVERIFY_STATE_DIR": str(state_dir)}
    return AgentVerifySession(env="staging", config_path=str(EXAMPLE), backend=backend,
                              report_dir=report_dir, environ=environ,
                              say=lambda line: print(f"agentverify: {line}"))


def scenarios(file: str, *names: str) -> list[Any]:
    specs = load_scenario_file(SCENARIOS / file)
    return [s for s in specs if not names or s.name in names]


def passed(result: Any) -> bool:
    """True when the scenario passed; the failing lines are printed for the log."""
    for gate in result.gates:
        print(f"  {result.name}: {gate.line()}")
    if result.error:
        print(f"  {result.name}: error: {result.error}")
    return bool(result.passed)


@pytest.fixture(scope="module")
def example(state_dir: Path, tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[AgentVerifySession]:
    """A session on the example agent's staging stack (3 replicas), local backend."""
    session = session_for("local", tmp_path_factory.mktemp("reports-example"), state_dir)
    yield session
    session.close()


def test_the_example_passes_the_bundled_smoke(example: AgentVerifySession) -> None:
    (spec,) = scenarios("smoke.yaml")
    result = example.run_scenario(spec)
    assert passed(result)
    facts = result.facts
    # the replica named in X-Served-By is the id the agent was given in INSTANCE_ID
    assert facts["traffic_replicas_seen"] == 3
    assert facts["chat_version"] == "v1"  # from the X-App-Version header
    assert facts["dashboard_panels_with_data"] == 4 and facts["dashboard_panels_inconclusive"] == 0


def test_the_example_rolls_out_rolls_back_and_refuses_broken_versions(
        example: AgentVerifySession) -> None:
    # rollback-to-tag is left out: a rollback is the same loop as the rolling update, and
    # asks nothing more of the agent than this one does
    results = {s.name: example.run_scenario(s) for s in scenarios(
        "rolling_update.yaml", "rolling-update", "faulty-rollout-is-rolled-back",
        "unhealthy-rollout-is-refused")}
    assert all(passed(r) for r in results.values()), {n: r.error for n, r in results.items()}
    rolled = results["rolling-update"].facts
    assert set(rolled["versions_seen"]) == {"v1", "v2"} and rolled["failed_requests"] == 0
    # its uvicorn re-raises SIGTERM (exit -15): a clean stop, not a crash
    assert rolled["unclean_stops"] == 0
    faulty = results["faulty-rollout-is-rolled-back"].facts
    # SUPPORT_AGENT_FAULT=errors (the version's own env) was caught on the first replica
    assert faulty["replicas_updated"] == 1 and faulty["rolled_back"] is True
    assert example.stack().versions == ["v1"] * 3


def test_the_example_passes_the_bundled_load_and_cost_controls(
        example: AgentVerifySession) -> None:
    (spec,) = scenarios("load.yaml")
    result = example.run_scenario(spec)
    assert passed(result)
    facts = result.facts
    # its own token counter (prompt + completion, embeddings as prompt) agrees in total
    assert facts["tokens_agree"] is True and facts["metric_tokens"] == facts["ledger_tokens"]
    # its reply carries no usage: shown as inconclusive, allowed by the bundled gate
    gate = next(g for g in result.gates if g.name == "max_tokens_usage_matches_ledger")
    assert gate.verdict == "inconclusive" and "completion_tokens is null" in gate.inconclusive
    assert str(facts["metric_cache_hit_ratio"]).startswith("inconclusive: ")
    # no admin endpoint: the limit went in through config.yaml and a rolling restart
    assert facts["rate_limit_429"] >= 1 and facts["rate_limit_set_seconds"] > 1
    stack = example.stack()
    assert stack.agent_config == example.config  # the previous limit was put back


def test_the_example_passes_the_bundled_operations(example: AgentVerifySession) -> None:
    """Its model changes through its config file, its own request log (SUPPORT_LOG_FILE,
    its X-Request-Id, SIGHUP) is rotated without a lost line, and it restarts cleanly."""
    results = {s.name: example.run_scenario(s) for s in scenarios("operations.yaml")}
    assert all(passed(r) for r in results.values()), {n: r.error for n, r in results.items()}
    update = results["model-update"].facts
    assert (update["model_before"], set(update["models_after_update"])) == ("gpt-4o-mini",
                                                                           {"gpt-4o"})
    # gpt-4o costs about 16 times gpt-4o-mini: the change shows, priced from the ledger
    assert update["cost_per_request_after_usd"] > 5 * update["cost_per_request_before_usd"]
    rotation = results["log-rotation"].facts
    assert rotation["log_requests_checked"] >= 30 and rotation["log_requests_lost"] == 0
    stack = example.stack()
    assert stack.agent_config == example.config and stack.versions == ["v1"] * 3


def test_the_example_passes_the_bundled_backup_and_restore(
        example: AgentVerifySession) -> None:
    (spec,) = scenarios("backup_restore.yaml")
    result = example.run_scenario(spec)
    assert passed(result)
    assert result.facts["known_answers"] == 3 and result.facts["known_answers_mismatched"] == 0
    assert result.facts["entities_lost"] == 0


def test_agent_operations_without_admin_endpoints(example: AgentVerifySession) -> None:
    import redis

    stack = example.stack()
    ctx = ScenarioContext(stack, example.config, env=example.env,
                          report_dir=example.report_dir, say=print)
    try:
        tag = uuid.uuid4().hex[:8]
        assert ctx.ask(f"How long is the warranty? ({tag})").ok  # cached: support:answer:*
        with redis.Redis.from_url(str(stack.service("redis").url()) + "/0") as client:
            client.set(f"support:ratelimit:{tag}", "keep me")
            answers = len(list(client.scan_iter(match="support:answer:*")))
            cleared = agent_ops.clear_cache(stack)
            assert (cleared.method, cleared.deleted) == ("redis", answers) and answers >= 1
            assert list(client.scan_iter(match="support:answer:*")) == []
            assert client.get(f"support:ratelimit:{tag}") == b"keep me"
            client.delete(f"support:ratelimit:{tag}")

        done = agent_ops.switch_llm(stack, "backup")
        assert done.method == "restart" and done.replicas_restarted == 3
        assert done.previous == {"use": "primary"} and agent_ops.current_llm(stack) == "backup"
        before = ctx.ledger()["models"]
        assert ctx.ask(f"How do I reset my hub? ({tag})").ok
        after = ctx.ledger()["models"]
        calls = {m: after[m]["chat_requests"] - before.get(m, {}).get("chat_requests", 0)
                 for m in after}
        # the backup's model (model.backup.model_name) answered, not the primary's
        assert calls.get("gpt-4o") == 1 and calls.get("gpt-4o-mini", 0) == 0
        back = agent_ops.switch_llm(stack, "primary")
        assert back.method == "restart" and agent_ops.current_llm(stack) == "primary"
        assert stack.agent_config == example.config
        print(f"clear_cache {cleared.seconds:.2f}s, switch_llm backup {done.seconds:.2f}s, "
              f"primary {back.seconds:.2f}s")
    finally:
        ctx.close()


def test_a_contract_that_does_not_match_the_reply_fails_with_one_clear_message(
        example: AgentVerifySession, tmp_path: Path) -> None:
    stack = example.stack()
    # the reference agent's reply paths, against this agent's replies
    wrong = with_overrides(example.config, {"stack.agent.contract.reply.answer": "answer",
                                            "stack.agent.contract.reply.sources": "sources"})
    ctx = ScenarioContext(stack, wrong, env=example.env, report_dir=tmp_path, say=print)
    (spec,) = scenarios("smoke.yaml")
    try:
        result = run_scenario(spec, ctx)
    finally:
        ctx.close()
    assert not result.passed and result.error is not None
    assert "\n" not in result.error
    assert result.error.startswith(
        "step 2 (chat): the agent's reply does not match stack.agent.contract.reply.answer "
        "('answer'): no key 'answer' in the body (keys: citations, meta, text); "
        "POST /v1/ask answered 200: '{\"text\":")
    # the reply is quoted, cut short
    assert len(result.error) < 600


def test_load_users_that_cannot_read_the_replies_fail_the_step_with_one_message(
        example: AgentVerifySession, tmp_path: Path) -> None:
    stack = example.stack()
    wrong = with_overrides(example.config, {"stack.agent.contract.reply.cached": "cached"})
    ctx = ScenarioContext(stack, wrong, env=example.env, report_dir=tmp_path, say=print)
    spec_file = tmp_path / "short-load.yaml"
    spec_file.write_text("name: short-load\nsteps:\n"
                         "  - load: {users: 2, spawn_rate: 4, user_rps: 2, duration_s: 2}\n")
    (spec,) = load_scenario_file(spec_file)
    try:
        result = run_scenario(spec, ctx)
    finally:
        ctx.close()
    assert result.error is not None and "\n" not in result.error
    assert result.error.startswith(
        "step 1 (load): the agent's reply does not match stack.agent.contract.reply.cached "
        "('cached'): no key 'cached' in the body (keys: citations, meta, text); "
        "POST /v1/ask answered 200: '{")
    assert result.error.endswith("load request(s) alike)")


@pytest.mark.docker
@pytest.mark.quiet_machine
def test_the_example_on_docker_with_its_image_built_from_its_source(
        state_dir: Path, tmp_path: Path) -> None:
    from agentverify.images import build_images

    session = session_for("docker", tmp_path / "reports", state_dir)
    try:
        # `agentverify images build` for this config: the base + the agent's own layer
        report = build_images(session.config, progress=lambda line: print(f"images: {line}"))
        agent_image = session.config.stack.images.get("agent") or report.names["agent"]
        assert report.agent is not None and report.agent.startswith("agentverify/agent-build:")
        assert report.roles["agent"] == report.agent_id
        results = [session.run_scenario(s) for s in
                   scenarios("smoke.yaml") + scenarios("rolling_update.yaml", "rolling-update")]
        assert all(passed(r) for r in results), [r.error for r in results]
        stack = session.stack()
        assert {r.handle.spec.image for r in stack.replicas} == {agent_image}
        answer = httpx.post(stack.lb_url + "/v1/ask", json={"question": "Warranty?"}, timeout=30)
        assert answer.status_code == 200 and answer.headers["x-served-by"].startswith("agent-")
    finally:
        session.close()
