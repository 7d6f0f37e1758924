"""The load steps' wiring without servers: config -> plan, cost objectives, the scenario."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from agentverify.config import Config, load_config
from agentverify.errors import ConfigError
from agentverify.load.steps import LOAD_FACTS, LoadParams, cost_violations, plan_from_config
from agentverify.scenarios.model import load_scenario_file
from agentverify.seed import CostSection

REPO = Path(__file__).resolve().parents[2]


def _ctx(**load: object) -> SimpleNamespace:
    config = Config.model_validate({"load": load})
    config.root = str(REPO)
    return SimpleNamespace(config=config, stack=SimpleNamespace(lb_url="http://127.0.0.1:8080"))


def test_plan_takes_the_config_and_params_win() -> None:
    ctx = _ctx(users=7, duration_s=12, repeat_ratio=0.25, workers=2, shape="ramp")
    plan = plan_from_config(ctx, LoadParams())
    assert (plan.users, plan.duration_s, plan.repeat_ratio, plan.workers, plan.shape) == \
        (7, 12.0, 0.25, 2, "ramp")
    assert plan.host == "http://127.0.0.1:8080"
    assert len(plan.prompts) == 200  # fixtures/prompts.jsonl
    plan = plan_from_config(ctx, LoadParams(users=3, workers=0, shape="step", steps=3))
    assert (plan.users, plan.workers, plan.shape, plan.steps) == (3, 0, "step", 3)


def test_each_plan_has_its_own_client_prefix() -> None:
    """Fresh questions of one run can never be cache hits of an earlier run."""
    ctx = _ctx()
    assert plan_from_config(ctx, LoadParams()).client_prefix != \
        plan_from_config(ctx, LoadParams()).client_prefix


def test_the_load_workers_option_lands_in_the_plan() -> None:
    """``--agentverify-load-workers 2`` is the override ``load.workers=2``."""
    config = load_config(REPO / "agentverify.yaml", "staging", overrides={"load.workers": 2},
                         environ={})
    ctx = SimpleNamespace(config=config, stack=SimpleNamespace(lb_url="http://127.0.0.1:1"))
    assert plan_from_config(ctx, LoadParams()).workers == 2


def test_a_locustfile_from_the_config_replaces_the_built_in_user() -> None:
    plan = plan_from_config(_ctx(locustfile="load/mine.py"), LoadParams())
    assert plan.locustfile == str(REPO / "load" / "mine.py")
    assert plan.prompts == ()


def test_a_missing_prompt_file_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="nope.jsonl: cannot read prompts"):
        plan_from_config(_ctx(prompts="nope.jsonl"), LoadParams())


def test_cost_objectives_from_the_config() -> None:
    cfg = CostSection(max_cost_per_request_usd=0.001, max_cost_per_1k_requests_usd=0.5)
    assert cost_violations(cfg, cost_usd=6.0, per_request=0.002, budget_usd=5.0) == [
        "cost $6.00 > budget $5.00", "cost per request $0.002 > $0.001",
        "cost per 1k requests $2.00 > $0.5"]
    assert cost_violations(CostSection(), cost_usd=6.0, per_request=None, budget_usd=None) == []


def test_params_reject_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError):
        LoadParams.model_validate({"userz": 3})
    with pytest.raises(ValueError):
        LoadParams.model_validate({"shape": "sine"})
    assert LoadParams.model_validate({"slo": {"p95_ms": 800}}).slo.p95_ms == 800


def test_the_bundled_load_scenario_gates_only_facts_its_steps_measure() -> None:
    (spec,) = load_scenario_file(REPO / "scenarios" / "load.yaml")
    assert [s.type for s in spec.steps][0] == "load"
    measured = {f for s in spec.steps for f in s.facts}
    assert set(spec.expect) <= measured
    assert {"p95_ms", "error_ratio", "slo_violations", "tokens_agree"} <= set(spec.expect)
    assert set(LOAD_FACTS) >= {"requests", "rps", "p50_ms", "p95_ms", "p99_ms", "error_ratio",
                               "ledger_tokens", "metric_tokens", "cost_usd",
                               "cost_per_1k_requests_usd", "cache_hit_ratio"}


def test_a_target_off_this_machine_is_refused_before_any_load() -> None:
    from agentverify.errors import ScenarioError

    ctx = _ctx()
    ctx.stack = SimpleNamespace(lb_url="http://192.0.2.10:80")
    with pytest.raises(ScenarioError, match="load: host: load targets only this machine"):
        plan_from_config(ctx, LoadParams())
