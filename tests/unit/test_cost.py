"""Cost math: prices, ledger deltas, budgets, counter increases, the token cross-check."""

from __future__ import annotations

import pytest

from agentverify.cost import (
    Budget,
    LedgerDelta,
    Price,
    PriceTable,
    check_tokens,
    counter_increase,
    format_usd,
)
from agentverify.seed import CostSection


def _ledger(**models: dict[str, int]) -> dict[str, object]:
    return {"models": models}


def test_cost_prices_prompt_and_embedding_as_input_and_completion_as_output() -> None:
    prices = PriceTable({"gpt-4": Price(input_per_million=30.0, output_per_million=60.0),
                         "emb": Price(input_per_million=0.02, output_per_million=0.0)})
    delta = LedgerDelta.between(
        _ledger(),
        _ledger(**{"gpt-4": {"prompt_tokens": 2_000_000, "completion_tokens": 500_000},
                   "emb": {"embedding_tokens": 1_000_000}}))
    cost = prices.cost(delta)
    assert cost.per_model == {"gpt-4": 90.0, "emb": 0.02}
    assert cost.total_usd == pytest.approx(90.02)
    assert cost.unpriced == ()


def test_a_model_without_a_price_costs_nothing_and_is_named() -> None:
    delta = LedgerDelta.between(_ledger(), _ledger(mystery={"prompt_tokens": 10}))
    cost = PriceTable({}).cost(delta)
    assert cost.total_usd == 0
    assert cost.unpriced == ("mystery",)


def test_price_table_from_the_config_section() -> None:
    table = PriceTable.from_config(CostSection())
    assert table.prices["gpt-4"] == Price(input_per_million=30.0, output_per_million=60.0)


def test_ledger_delta_per_model_and_totals() -> None:
    before = _ledger(**{"gpt-4": {"chat_requests": 3, "prompt_tokens": 100,
                                  "completion_tokens": 10}})
    after = _ledger(**{"gpt-4": {"chat_requests": 5, "prompt_tokens": 180,
                                 "completion_tokens": 30},
                       "emb": {"embedding_requests": 2, "embedding_tokens": 12}})
    delta = LedgerDelta.between(before, after)
    assert delta.models["gpt-4"].chat_requests == 2
    assert delta.total("chat_requests") == 2
    assert delta.by_kind() == {"prompt": 80, "completion": 20, "embedding": 12}
    assert delta.tokens == 112


def test_ledger_reset_mid_run_counts_from_zero_and_idle_models_are_left_out() -> None:
    before = _ledger(a={"prompt_tokens": 500}, idle={"prompt_tokens": 7})
    after = _ledger(a={"prompt_tokens": 40}, idle={"prompt_tokens": 7})
    delta = LedgerDelta.between(before, after)
    assert delta.by_kind()["prompt"] == 40
    assert "idle" not in delta.models


@pytest.mark.parametrize(("limit", "spent", "reason"), [
    (None, 1e9, None), (5.0, 5.0, None), (5.0, 4.99, None),
    (5.0, 5.61, "cost $5.61 > budget $5.00"), (0.01, 0.0123, "cost $0.0123 > budget $0.01"),
])
def test_budget_breach(limit: float | None, spent: float, reason: str | None) -> None:
    assert Budget(limit).breach(spent) == reason


@pytest.mark.parametrize(("value", "text"), [
    (0, "$0"), (12.345, "$12.35"), (1234.5, "$1,234.50"), (0.00421, "$0.00421"),
    (0.5, "$0.5"),
])
def test_format_usd(value: float, text: str) -> None:
    assert format_usd(value) == text


def test_counter_increase_handles_resets_and_new_series() -> None:
    before = [({"__name__": "t", "instance": "a", "kind": "prompt"}, 100.0),
              ({"instance": "b", "kind": "prompt"}, 50.0),
              ({"instance": "a", "kind": "completion"}, 10.0)]
    after = [({"instance": "a", "kind": "prompt"}, 130.0),          # +30
             ({"instance": "b", "kind": "prompt"}, 20.0),           # reset: +20
             ({"instance": "c", "kind": "prompt"}, 5.0),            # new replica: +5
             ({"instance": "a", "kind": "completion"}, 10.0)]       # idle: +0
    assert counter_increase(before, after, by="kind") == {"prompt": 55.0, "completion": 0.0}


def test_tokens_agree_within_one_percent() -> None:
    check = check_tokens({"prompt": 10_000, "completion": 2_000},
                         {"prompt": 10_050.0, "completion": 2_000.0})
    assert check.agree
    assert check.message == "agree"
    assert check.mismatch_ratio == pytest.approx(0.005)
    assert (check.ledger_total, check.metric_total) == (12_000, 12_050)


def test_token_mismatch_names_the_kind_that_is_off() -> None:
    check = check_tokens({"prompt": 10_000, "completion": 2_000, "embedding": 300},
                         {"prompt": 10_000.0, "completion": 1_800.0, "embedding": 300.0})
    assert not check.agree
    assert check.mismatch_ratio == pytest.approx(0.1)
    assert check.message == ("token_usage_total is off: completion metric 1,800 vs "
                             "ledger 2,000 (-10.0%)")


def test_tokens_on_one_side_only_disagree_and_nothing_on_either_side_agrees() -> None:
    assert not check_tokens({"prompt": 0}, {"prompt": 12.0}).agree
    assert check_tokens({"prompt": 0}, {}).agree
    assert check_tokens({}, {}).mismatch_ratio == 0.0
