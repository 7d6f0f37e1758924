"""The scenario runner against step types of a test's own registry: order, labels, errors,
clean-ups (also after an interruption) and gates. No server is involved."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentverify.errors import ScenarioError
from agentverify.report.journal import StepResult
from agentverify.scenarios.model import load_scenario_file
from agentverify.scenarios.registry import StepParams, StepRegistry, StepType
from agentverify.scenarios.runner import ScenarioContext, run_scenario


class CountParams(StepParams):
    n: int = 1


def _registry(log: list[str]) -> StepRegistry:
    registry = StepRegistry()

    def count(ctx: ScenarioContext, params: CountParams) -> dict:
        log.append(f"count {params.n}")
        ctx.defer(f"undo {params.n}", lambda: log.append(f"undo {params.n}"))
        return {"counted": params.n}

    def boom(ctx: ScenarioContext, params: StepParams) -> dict:
        log.append("boom")
        raise ScenarioError("the thing broke")

    def interrupt(ctx: ScenarioContext, params: StepParams) -> dict:
        raise KeyboardInterrupt

    def bad_cleanup(ctx: ScenarioContext, params: StepParams) -> dict:
        def fail() -> None:
            raise RuntimeError("cleanup exploded")
        ctx.defer("remove the fault", fail)
        return {}

    registry.add(StepType("count", count, CountParams, ("counted",)))
    registry.add(StepType("boom", boom, StepParams, ()))
    registry.add(StepType("interrupt", interrupt, StepParams, ()))
    registry.add(StepType("bad_cleanup", bad_cleanup, StepParams, ()))
    return registry


def _scenario(tmp_path: Path, steps: str, expect: str, registry: StepRegistry):
    path = tmp_path / "scenarios" / "s.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"name: s\nsteps:\n{steps}expect:\n{expect}")
    (spec,) = load_scenario_file(path, registry)
    return spec


def _ctx(tmp_path: Path) -> ScenarioContext:
    return ScenarioContext(stack=None, config=None, env="unit",  # type: ignore[arg-type]
                           report_dir=tmp_path, say=lambda line: None)


def test_steps_run_in_order_labels_suffix_facts_and_cleanups_run_last_first(tmp_path) -> None:
    log: list[str] = []
    spec = _scenario(tmp_path, "  - count: {n: 1}\n  - count: {n: 2, label: again}\n",
                     "  counted: '== 1'\n  counted_again: '>= 2'\n", _registry(log))
    result = run_scenario(spec, _ctx(tmp_path))
    assert log == ["count 1", "count 2", "undo 2", "undo 1"]
    assert result.facts == {"counted": 1, "counted_again": 2}
    assert result.passed and [g.passed for g in result.gates] == [True, True]
    assert [s.type for s in result.steps] == ["count", "count"]


def test_an_error_ends_the_scenario_keeps_the_facts_and_fails_the_gates(tmp_path) -> None:
    log: list[str] = []
    spec = _scenario(tmp_path, "  - count: {n: 3}\n  - boom: {}\n  - count: {n: 4, label: never}\n",
                     "  counted: '== 3'\n  counted_never: '== 4'\n", _registry(log))
    result = run_scenario(spec, _ctx(tmp_path))
    assert log == ["count 3", "boom", "undo 3"]
    assert result.error == "step 2 (boom): the thing broke"
    assert result.facts == {"counted": 3}
    assert not result.passed
    never = next(g for g in result.gates if g.name == "counted_never")
    assert never.measured is None and not never.passed


def test_cleanups_run_after_an_interruption(tmp_path) -> None:
    log: list[str] = []
    spec = _scenario(tmp_path, "  - count: {n: 5}\n  - interrupt: {}\n", "  counted: '== 5'\n",
                     _registry(log))
    with pytest.raises(KeyboardInterrupt):
        run_scenario(spec, _ctx(tmp_path))
    assert log == ["count 5", "undo 5"]


def test_a_failing_cleanup_is_the_scenarios_error_and_the_others_still_run(tmp_path) -> None:
    log: list[str] = []
    spec = _scenario(tmp_path, "  - count: {n: 6}\n  - bad_cleanup: {}\n", "  counted: '== 6'\n",
                     _registry(log))
    result = run_scenario(spec, _ctx(tmp_path))
    assert log == ["count 6", "undo 6"]
    assert result.error == "cleanup 'remove the fault' failed: cleanup exploded"
    assert not result.passed


def test_a_waiting_block_is_journaled_as_a_wait_even_when_it_raises(tmp_path) -> None:
    ctx = _ctx(tmp_path)
    ctx.step = StepResult(index=1, type="drill", seconds=0.0, started=0.0)
    with ctx.waiting("alert"):
        time.sleep(0.05)
    with pytest.raises(RuntimeError), ctx.waiting("alert"):
        time.sleep(0.05)
        raise RuntimeError("the watch failed")
    with ctx.waiting("bake"):
        pass
    assert set(ctx.step.waits) == {"alert", "bake"}
    assert 0.1 <= ctx.step.waits["alert"] < 1.0
    ctx.step = None
    with ctx.waiting("alert"):  # outside a step: nothing to journal it in, and no error
        pass
