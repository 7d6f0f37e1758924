"""Token pricing, ledger deltas, budgets and the ledger-vs-metric token check.

A load rehearsal is billed the way the provider would bill it: from the LLM endpoint's
own ledger (the stub's ``GET /ledger``), read before and after the run. The agent's
``token_usage_total`` counter, as Prometheus scraped it, must tell the same story — if
it does not, the dashboard a team budgets from is lying, and the gate says which kind of
token is off.

Example:
    >>> prices = PriceTable({"gpt-4": Price(input_per_million=30.0, output_per_million=60.0)})
    >>> before = {"models": {"gpt-4": {"prompt_tokens": 0, "completion_tokens": 0}}}
    >>> after = {"models": {"gpt-4": {"prompt_tokens": 1000, "completion_tokens": 500,
    ...                               "chat_requests": 2}}}
    >>> delta = LedgerDelta.between(before, after)
    >>> prices.cost(delta).total_usd
    0.06
    >>> Budget(0.05).breach(0.06)
    'cost $0.06 > budget $0.05'
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentverify.seed import CostSection, Price

__all__ = [
    "TOKEN_KINDS",
    "Budget",
    "CostBreakdown",
    "LedgerDelta",
    "ModelUsage",
    "PriceTable",
    "TokenCheck",
    "check_tokens",
    "counter_increase",
    "format_usd",
    "settled_ledger",
]

#: the token kinds both the ledger and ``token_usage_total{kind}`` count
TOKEN_KINDS = ("prompt", "completion", "embedding")

_LEDGER_FIELDS = ("requests", "errors", "chat_requests", "embedding_requests",
                  "prompt_tokens", "completion_tokens", "embedding_tokens",
                  "calls_without_max_tokens")


def format_usd(value: float) -> str:
    """Dollars as people read them: ``$12.35``, ``$0.00421``, ``$0``."""
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.3g}"


@dataclass(frozen=True)
class ModelUsage:
    """What one model was asked for between two ledger readings."""

    requests: int = 0
    errors: int = 0
    chat_requests: int = 0
    embedding_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    embedding_tokens: int = 0
    #: chat calls that asked for no completion limit (answered or not)
    calls_without_max_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens + self.embedding_tokens


@dataclass(frozen=True)
class LedgerDelta:
    """Per-model usage between two snapshots of the LLM ledger.

    A ledger that went *down* (someone called ``POST /ledger/reset`` mid-run) counts from
    zero, like a Prometheus counter reset, rather than producing negative tokens.
    """

    models: dict[str, ModelUsage] = field(default_factory=dict)

    @classmethod
    def between(cls, before: Mapping[str, Any], after: Mapping[str, Any]) -> LedgerDelta:
        b_models = before.get("models") or {}
        a_models = after.get("models") or {}
        out: dict[str, ModelUsage] = {}
        for name, counters in a_models.items():
            prev = b_models.get(name) or {}
            values = {}
            for key in _LEDGER_FIELDS:
                now, then = int(counters.get(key, 0)), int(prev.get(key, 0))
                values[key] = now - then if now >= then else now
            usage = ModelUsage(**values)
            if usage != ModelUsage():
                out[name] = usage
        return cls(out)

    @classmethod
    def of_calls(cls, calls: Iterable[Mapping[str, Any]]) -> LedgerDelta:
        """The usage of calls of the LLM stub's call log (``GET /ledger/calls``); only
        answered calls (status 200) were billed.

        Example:
            >>> LedgerDelta.of_calls([{"endpoint": "chat", "model": "m", "status": 200,
            ...                        "prompt_tokens": 9, "completion_tokens": 3}]).tokens
            12
        """
        sums: dict[str, dict[str, int]] = {}
        for call in calls:
            model = sums.setdefault(str(call.get("model")), dict.fromkeys(_LEDGER_FIELDS, 0))
            if call.get("endpoint") == "chat" and call.get("max_tokens") is None:
                model["calls_without_max_tokens"] += 1
            if call.get("status") != 200:
                model["errors"] += 1
                continue
            model["requests"] += 1
            model["chat_requests" if call.get("endpoint") == "chat" else "embedding_requests"] += 1
            for key in ("prompt_tokens", "completion_tokens", "embedding_tokens"):
                model[key] += int(call.get(key) or 0)
        return cls({name: ModelUsage(**counts) for name, counts in sums.items()})

    def total(self, attr: str) -> int:
        """Sum one :class:`ModelUsage` field over every model."""
        return sum(int(getattr(u, attr)) for u in self.models.values())

    @property
    def tokens(self) -> int:
        return sum(u.tokens for u in self.models.values())

    def by_kind(self) -> dict[str, int]:
        """Tokens per kind (``prompt``, ``completion``, ``embedding``)."""
        return {kind: self.total(f"{kind}_tokens") for kind in TOKEN_KINDS}


@dataclass(frozen=True)
class CostBreakdown:
    """Dollars of a run, in total and per model; ``unpriced`` models cost 0."""

    total_usd: float
    per_model: dict[str, float]
    unpriced: tuple[str, ...] = ()


class PriceTable:
    """Prices per model (``cost.prices`` of the config).

    Args:
        prices: model name -> :class:`~agentverify.seed.Price` (``cost.prices``).
    """

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self.prices = dict(prices)

    @classmethod
    def from_config(cls, cost_config: CostSection) -> PriceTable:
        """From the config's ``cost`` section (:class:`~agentverify.seed.CostSection`)."""
        return cls(cost_config.prices)

    def cost(self, delta: LedgerDelta) -> CostBreakdown:
        """Dollars of a ledger delta: prompt and embedding tokens at the input price,
        completion tokens at the output price."""
        per_model: dict[str, float] = {}
        unpriced = []
        for name, usage in delta.models.items():
            price = self.prices.get(name)
            if price is None:
                if usage.tokens:
                    unpriced.append(name)
                per_model[name] = 0.0
                continue
            per_model[name] = round((
                (usage.prompt_tokens + usage.embedding_tokens) * price.input_per_million
                + usage.completion_tokens * price.output_per_million) / 1_000_000, 10)
        return CostBreakdown(round(sum(per_model.values()), 10), per_model, tuple(unpriced))


@dataclass(frozen=True)
class Budget:
    """A spending limit for one run (``cost.budget_usd`` or a step's ``budget_usd``)."""

    limit_usd: float | None

    def breach(self, spent_usd: float) -> str | None:
        """The abort reason when ``spent_usd`` is over the limit, else ``None``."""
        if self.limit_usd is None or spent_usd <= self.limit_usd:
            return None
        return f"cost {format_usd(spent_usd)} > budget {format_usd(self.limit_usd)}"


def counter_increase(before: Iterable[tuple[Mapping[str, str], float]],
                     after: Iterable[tuple[Mapping[str, str], float]],
                     by: str) -> dict[str, float]:
    """Increase of a counter between two instant queries, summed by label ``by``.

    Each series (its full label set) is compared with itself; a series whose value went
    down was reset (a replica restarted) and counts from zero, one that is new counts in
    full — the arithmetic of PromQL's ``increase()`` without its extrapolation.

    Example:
        >>> b = [({"instance": "a", "kind": "prompt"}, 10.0)]
        >>> a = [({"instance": "a", "kind": "prompt"}, 25.0),
        ...      ({"instance": "b", "kind": "prompt"}, 5.0)]
        >>> counter_increase(b, a, by="kind")
        {'prompt': 20.0}
    """
    def key(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k, v) for k, v in labels.items() if k != "__name__"))

    then = {key(labels): value for labels, value in before}
    out: dict[str, float] = {}
    for labels, value in after:
        prev = then.get(key(labels), 0.0)
        inc = value - prev if value >= prev else value
        group = str(labels.get(by, ""))
        out[group] = out.get(group, 0.0) + inc
    return out


@dataclass(frozen=True)
class TokenCheck:
    """The ledger and the agent's metric compared, kind by kind.

    Attributes:
        ledger: tokens per kind from the LLM ledger delta.
        metric: tokens per kind from the ``token_usage_total`` increase.
        mismatch_ratio: the worst relative difference over the kinds and the total,
            ``|metric - ledger| / ledger`` (0 when both are 0).
        agree: ``mismatch_ratio <= tolerance``.
        message: which side is off and by how much, or ``"agree"``.
    """

    ledger: dict[str, int]
    metric: dict[str, int]
    mismatch_ratio: float
    agree: bool
    message: str

    @property
    def ledger_total(self) -> int:
        return sum(self.ledger.values())

    @property
    def metric_total(self) -> int:
        return sum(self.metric.values())


def _ratio(metric: float, ledger: float) -> float:
    if ledger == 0:
        return 0.0 if metric == 0 else 1.0
    return abs(metric - ledger) / ledger


def check_tokens(ledger: Mapping[str, int], metric: Mapping[str, float],
                 tolerance: float = 0.01, *, name: str = "token_usage_total") -> TokenCheck:
    """Compare tokens per kind; name the kinds that disagree.

    Example:
        >>> check_tokens({"prompt": 1000, "completion": 200}, {"prompt": 1000,
        ...              "completion": 150}).message
        'token_usage_total is off: completion metric 150 vs ledger 200 (-25.0%)'
    """
    kinds = [k for k in TOKEN_KINDS if k in ledger or k in metric] + sorted(
        (set(ledger) | set(metric)) - set(TOKEN_KINDS))
    led = {k: int(ledger.get(k, 0)) for k in kinds}
    met = {k: int(round(metric.get(k, 0.0))) for k in kinds}
    ratios = {k: _ratio(met[k], led[k]) for k in kinds}
    total = _ratio(sum(met.values()), sum(led.values()))
    worst = max([total, *ratios.values()])
    agree = worst <= tolerance
    if agree:
        message = "agree"
    else:
        off = []
        for k in kinds:
            if ratios[k] > tolerance:
                pct = (met[k] - led[k]) / led[k] * 100 if led[k] else float("inf")
                off.append(f"{k} metric {met[k]:,} vs ledger {led[k]:,} ({pct:+.1f}%)")
        if not off:
            off.append(f"total metric {sum(met.values()):,} vs ledger {sum(led.values()):,}")
        message = f"{name} is off: " + "; ".join(off)
    return TokenCheck(led, met, round(worst, 6), agree, message)


def settled_ledger(read: Callable[[], dict[str, Any]], *, timeout: float = 5.0,
                   gap: float = 0.3) -> dict[str, Any]:
    """The ledger ``read()`` returns once two readings ``gap`` seconds apart agree
    (answers in flight have landed), or the last reading after ``timeout`` seconds.

    Example:
        >>> settled_ledger(lambda: {"models": {}}, gap=0.0)
        {'models': {}}
    """
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(gap)
        now = read()
        if now == last:
            return now
        last = now
    return last
