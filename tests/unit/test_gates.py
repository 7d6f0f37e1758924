"""Gates: thresholds as SREs write them, verdicts with the measured figure."""

from __future__ import annotations

import pytest

from agentverify.errors import ScenarioSchemaError
from agentverify.gates import Gate, format_value, parse_gates


@pytest.mark.parametrize(
    ("spec", "measured", "passed"),
    [
        ("<= 800", 512.3, True), ("<= 800", 800, True), ("<= 800", 800.1, False),
        ("< 0.01", 0.0099, True), ("< 0.01", 0.01, False),
        ("== 0", 0, True), ("== 0", 1, False), (">= 20", 19.9, False), ("> 0", 3, True),
        ("!= 0", 0, False), ("== true", True, True), ("== true", False, False),
        (True, True, True), (0, 0, True), (0, 2, False), ("0", 0, True),
    ],
)
def test_gate_verdicts(spec: object, measured: float, passed: bool) -> None:
    result = Gate.parse("fact", spec).evaluate({"fact": measured})
    assert result.passed is passed
    assert result.measured == measured


def test_a_fact_not_measured_fails_and_says_so() -> None:
    result = Gate.parse("p95_ms", "<= 800").evaluate({})
    assert not result.passed
    assert result.line() == "FAIL p95_ms: measured not measured, threshold <= 800"


def test_line_shows_figure_beside_threshold() -> None:
    assert Gate.parse("p95_ms", "<= 800").evaluate({"p95_ms": 912.25}).line() == \
        "FAIL p95_ms: measured 912.2, threshold <= 800"
    assert Gate.parse("failed_requests", "== 0").evaluate({"failed_requests": 0}).line() == \
        "PASS failed_requests: measured 0, threshold == 0"


def test_per_environment_thresholds_with_default() -> None:
    expect = {"p95_ms": {"default": "<= 800", "production": "<= 500"},
              "only_prod": {"production": "== 0"}, "failed": "== 0"}
    staging = {g.name: g.threshold for g in parse_gates(expect, "staging")}
    prod = {g.name: g.threshold for g in parse_gates(expect, "production")}
    assert staging == {"p95_ms": "<= 800", "failed": "== 0"}
    assert prod == {"p95_ms": "<= 500", "only_prod": "== 0", "failed": "== 0"}


@pytest.mark.parametrize("bad", ["about 5", "<=", [1, 2], None])
def test_bad_threshold_is_a_schema_error_naming_the_fact(bad: object) -> None:
    with pytest.raises(ScenarioSchemaError, match="expect.p95_ms: expected a threshold"):
        parse_gates({"p95_ms": bad}, "dev")


def test_format_value() -> None:
    assert format_value(12000) == "12,000"
    assert format_value(0.00421) == "0.00421"
    assert format_value(3.14159) == "3.14"
    assert format_value(True) == "true"
    assert format_value(None) == "not measured"
