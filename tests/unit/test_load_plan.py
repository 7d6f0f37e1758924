"""The load plan, prompt choice, answer counters and shapes — all without Locust."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agentverify.load.plan import ClientCounters, LoadPlan, PromptPicker
from agentverify.load.shapes import target

PROMPTS = tuple(f"question {i}?" for i in range(20))


def test_plan_round_trips_through_json() -> None:
    plan = LoadPlan(host="http://127.0.0.1:1", prompts=PROMPTS, workers=2, shape="step",
                    user_rps=2.5)
    again = LoadPlan.from_json(plan.to_json())
    assert again == plan
    assert isinstance(again.prompts, tuple)


def test_plan_rejects_an_unknown_shape_and_a_missing_prompt_set() -> None:
    with pytest.raises(ValueError, match="shape"):
        LoadPlan(host="http://127.0.0.1:1", prompts=PROMPTS,
                 shape="sine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompts"):
        LoadPlan(host="http://127.0.0.1:1")
    assert LoadPlan(host="http://localhost:1", locustfile="mine.py").prompts == ()


@pytest.mark.parametrize("host", ["http://10.0.0.5:80", "https://example.com", "h", ""])
def test_load_targets_only_this_machine(host: str) -> None:
    with pytest.raises(ValueError, match="only this machine"):
        LoadPlan(host=host, prompts=PROMPTS)


def test_repeat_ratio_is_the_share_of_hot_questions() -> None:
    picker = PromptPicker(PROMPTS, repeat_ratio=0.7, hot_set=3, seed=1, tag="u")
    picks = [picker.next() for _ in range(4000)]
    repeated = [q for q, rep in picks if rep]
    assert 0.66 < len(repeated) / len(picks) < 0.74
    assert set(repeated) <= set(PROMPTS[:3])


def test_fresh_questions_are_unique_so_they_miss_the_cache() -> None:
    picker = PromptPicker(PROMPTS, repeat_ratio=0.0, hot_set=3, seed=1, tag="av-1-7")
    fresh = [picker.next() for _ in range(500)]
    assert len({q for q, _ in fresh}) == 500
    assert all(not rep and " (ref av-1-7-" in q for q, rep in fresh)


def test_choices_are_repeatable_per_seed_and_differ_per_user() -> None:
    def run(tag: str, seed: int = 3) -> list[tuple[str, bool]]:
        picker = PromptPicker(PROMPTS, 0.5, 5, seed=seed, tag=tag)
        return [picker.next() for _ in range(50)]

    assert run("a") == run("a")
    assert run("a") != run("b")
    assert run("a") != run("a", seed=4)


def test_counters_tally_answers_and_merge_across_workers() -> None:
    worker = ClientCounters()
    worker.answer(False, 40)
    worker.answer(True, 90)
    worker.answer(None, None)  # an agent whose reply says neither: nothing counted
    worker.status(200)
    worker.status(200)
    worker.status(429)
    master = ClientCounters(cache_hits=1, max_completion_tokens=10)
    master.merge(worker.drain())
    master.merge(None)
    assert master.to_json() == {
        "status_codes": {"200": 2, "429": 1}, "cache_hits": 2, "cache_misses": 1,
        # billed tokens are the fresh answer's; the longest includes the cached one
        "completion_tokens": 40, "max_completion_tokens": 90}
    assert worker.to_json() == ClientCounters().to_json()


@pytest.mark.parametrize(("t", "expected"), [(0.0, (10, 5.0)), (9.9, (10, 5.0)), (10.0, None)])
def test_constant_shape(t: float, expected: tuple[int, float] | None) -> None:
    assert target("constant", t, users=10, spawn_rate=5.0, duration_s=10.0, steps=1) == expected


def test_ramp_shape_climbs_to_the_peak_by_the_end() -> None:
    counts = [target("ramp", float(t), users=10, spawn_rate=2.0, duration_s=10.0, steps=1)
              for t in range(11)]
    users = [c[0] for c in counts if c is not None]
    assert users[0] == 1 and users[-1] == 10
    assert users == sorted(users)
    assert counts[-1] is None


def test_step_shape_has_equal_stages() -> None:
    users = [target("step", float(t), users=9, spawn_rate=9.0, duration_s=12.0, steps=3)
             for t in (0, 3.9, 4, 7.9, 8, 11.9)]
    assert [u[0] for u in users if u] == [3, 3, 6, 6, 9, 9]


def test_unknown_shape_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown shape"):
        target("sine", 0.0, users=1, spawn_rate=1.0, duration_s=1.0, steps=1)


def test_nothing_but_the_child_imports_locust() -> None:
    """Locust gevent-patches its importer (locust#2250): the plugin side must stay clean."""
    code = ("import sys\n"
            "import agentverify.load, agentverify.load.driver, agentverify.load.stats\n"
            "import agentverify.load.plan, agentverify.load.shapes, agentverify.load.steps\n"
            "import agentverify.cost, agentverify.plugin, agentverify.scenarios.runner\n"
            "import agentverify.scenarios.cost_controls, agentverify.monitoring.counters\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('locust', 'gevent'))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
