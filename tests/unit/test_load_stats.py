"""The child's JSON-lines protocol, typed results, SLO evaluation and the abort rule."""

from __future__ import annotations

import json

import pytest

from agentverify.config import SLOConfig
from agentverify.errors import LoadTestError
from agentverify.load.stats import (
    ChildError,
    ChildInfo,
    LoadResult,
    SLOAbort,
    Snapshot,
    parse_line,
    slo_breaches,
)
from agentverify.seed import Objectives


def _line(**data: object) -> str:
    return json.dumps(data)


def _result(**over: object) -> LoadResult:
    data: dict[str, object] = dict(requests=1000, failures=5, duration_s=20.0, rps=50.0,
                                   p50_ms=40.0, p95_ms=300.0, p99_ms=600.0)
    data.update(over)
    return LoadResult(**data)  # type: ignore[arg-type]


def test_parse_snapshot_ignores_fields_it_does_not_know() -> None:
    snap = parse_line(_line(type="snapshot", t=3.0, users=10, requests=300, failures=3,
                            rps=100.0, interval_rps=120.0, p50_ms=20, p95_ms=90, p99_ms=140,
                            interval_p95_ms=None, future_field=1))
    assert isinstance(snap, Snapshot)
    assert snap.error_ratio == pytest.approx(0.01)
    assert snap.interval_p95_ms is None
    assert snap.progress_line() == ("load    3s: 10 users, 120.0 req/s, p95 90 ms, errors 3 "
                                    "(1.0%), 300 requests")


def test_parse_result_with_counters() -> None:
    result = parse_line(_line(type="result", requests=200, failures=0, duration_s=10.0,
                              rps=20.0, p50_ms=10, p95_ms=50, p99_ms=80,
                              status_codes={"200": 200}, cache_hits=150, cache_misses=50,
                              workers=2, users=8, stopped_by="signal"))
    assert isinstance(result, LoadResult)
    assert result.cache_hit_ratio == 0.75
    assert result.error_ratio == 0.0
    assert result.stopped_by == "signal"
    assert result.summary() == ("200 requests in 10.0s (20.0 req/s), p50/p95/p99 10/50/80 ms, "
                                "0 failed (0.00%), 8 users on 2 workers")
    assert result.to_json()["status_codes"] == {"200": 200}


def test_parse_info_and_error() -> None:
    assert parse_line(_line(type="info", message="2 workers")) == ChildInfo("2 workers")
    assert parse_line(_line(type="error", message="boom")) == ChildError("boom")


@pytest.mark.parametrize(("line", "problem"), [
    ("not json", "not JSON"),
    ("[1, 2]", "expected an object"),
    (_line(type="mystery"), "unknown line type 'mystery'"),
    (_line(type="result", requests=1), "incomplete result"),
])
def test_bad_lines_are_load_test_errors(line: str, problem: str) -> None:
    with pytest.raises(LoadTestError, match=problem):
        parse_line(line)


def test_a_result_without_answers_has_no_hit_ratio() -> None:
    assert _result().cache_hit_ratio is None
    assert _result(requests=0, failures=0).error_ratio == 0.0


def test_slo_breaches_name_the_figure_and_the_objective() -> None:
    slo = Objectives(p50_ms=30, p95_ms=250, p99_ms=2000, error_ratio=0.001, min_rps=60)
    assert slo_breaches(_result(), slo) == [
        "p50_ms 40 > 30", "p95_ms 300 > 250", "error_ratio 0.005 > 0.001", "rps 50.0 < 60"]
    assert slo_breaches(_result(), slo, include_rps=False)[-1] == "error_ratio 0.005 > 0.001"
    assert slo_breaches(_result(), Objectives()) == []


def test_slo_from_config_with_step_overrides() -> None:
    slo = SLOConfig(p95_ms=1000, min_rps=20).merged({"p95_ms": 1.0, "p99_ms": None})
    assert slo == Objectives(p95_ms=1.0, min_rps=20)


@pytest.mark.parametrize(("t", "requests", "p95", "verdict"), [
    (2.0, 500, 5000.0, None),                    # still warming up: too early
    (10.0, 49, 5000.0, None),                    # too few requests to judge
    (3.0, 50, 800.0, None),                      # at the objective: fine
    (3.0, 50, 1234.0, "p95_ms 1234 > 800"),
])
def test_slo_abort_after_warm_up(t: float, requests: int, p95: float,
                                 verdict: str | None) -> None:
    abort = SLOAbort(Objectives(p95_ms=800, min_rps=1000), warmup_s=3.0, min_requests=50)
    snap = Snapshot(t=t, users=5, requests=requests, failures=0, rps=1.0, p95_ms=p95)
    assert abort.check(snap) == verdict  # min_rps never aborts a running load


def test_slo_abort_joins_every_breach() -> None:
    abort = SLOAbort(Objectives(p95_ms=100, error_ratio=0.01))
    snap = Snapshot(t=5, users=5, requests=100, failures=50, p95_ms=150)
    assert abort.check(snap) == "p95_ms 150 > 100; error_ratio 0.5 > 0.01"
