"""Load rehearsal steps: Locust load with SLO and cost gates, and cache cost.

===============  ===========================================================================
``load``         Locust load through the load balancer (child process; ``workers: N`` for
                 master/worker mode): latency, throughput, errors, the run's tokens and
                 dollars from the LLM ledger, cross-checked against ``token_usage_total``
                 in Prometheus, and the chat calls that asked for no ``max_tokens``;
                 stops early on an SLO breach (``slo.abort_on_fail``) or when the budget
                 is spent
``cache_cost``   two short loads at a low and a high repeat ratio: cost per request falls
                 as the cache hit ratio rises, and a cache hit makes no LLM call
``load_start``   Locust load in the background while the next steps run (a game day's
                 traffic under faults and drills); ``load_stop`` ends it and measures it
===============  ===========================================================================

The agent's cost controls (``max_tokens``, ``rate_limit``) are checked without Locust, in
:mod:`agentverify.scenarios.cost_controls`; the Prometheus counters are read by
:mod:`agentverify.monitoring.counters`.

Gates that come from the config rather than the scenario file are counted into
``slo_violations`` (``slo.*`` of the environment) and ``cost_violations``
(``cost.budget_usd``, ``cost.max_cost_per_request_usd``,
``cost.max_cost_per_1k_requests_usd``), with the reasons in ``slo_violation`` /
``cost_violation``, so ``expect: {slo_violations: "== 0"}`` gates each environment on its
own objectives.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from agentverify.contract import AgentContract
from agentverify.cost import (
    Budget,
    LedgerDelta,
    PriceTable,
    check_tokens,
    counter_increase,
    format_usd,
    settled_ledger,
)
from agentverify.errors import ContractError, ScenarioError
from agentverify.gates import Inconclusive
from agentverify.load.driver import BackgroundLoad, LoadDriver
from agentverify.load.plan import LoadPlan
from agentverify.load.stats import SLOAbort, slo_breaches
from agentverify.monitoring.counters import MetricReading, read_metrics, wait_for_scrape
from agentverify.monitoring.metrics import not_exported, replica_exports
from agentverify.report.journal import TimeSeries
from agentverify.scenarios.registry import StepParams, step
from agentverify.scenarios.smoke import load_prompts
from agentverify.seed import Objectives

if TYPE_CHECKING:
    from agentverify.scenarios.runner import ScenarioContext

__all__ = ["BACKGROUND_KEY", "LoadParams", "background_load", "plan_from_config",
           "prepare_background_load", "start_background_load"]


# --------------------------------------------------------------------------- helpers


class LoadParams(StepParams):
    """Parameters of ``load``; each ``None`` falls back to the config's ``load:``."""

    users: int | None = Field(None, ge=1, le=10_000)
    spawn_rate: float | None = Field(None, gt=0)
    duration_s: float | None = Field(None, gt=0, le=86_400)
    shape: Literal["constant", "ramp", "step"] | None = None
    steps: int = Field(4, ge=1, le=100)
    repeat_ratio: float | None = Field(None, ge=0, le=1)
    hot_set: int = Field(5, ge=1, le=1000)
    user_rps: float | None = Field(None, gt=0)
    workers: int | None = Field(None, ge=0, le=64)
    locustfile: str | None = None
    budget_usd: float | None = Field(None, ge=0)
    abort_on_fail: bool | None = None
    slo: Objectives = Field(default_factory=Objectives)
    warmup_s: float = Field(3.0, ge=0)
    warmup_requests: int = Field(50, ge=1)
    check_metrics: bool = True
    metrics_timeout_s: float = Field(20.0, gt=0)


def plan_from_config(ctx: ScenarioContext, params: LoadParams, **overrides: Any) -> LoadPlan:
    """The :class:`LoadPlan` of a step: params over the config's ``load:`` section.

    Raises:
        ScenarioError: the plan is impossible (e.g. a host that is not this machine).
        ConfigError: the prompt file cannot be read.
    """
    cfg = ctx.config.load

    def pick(name: str) -> Any:
        # an explicit override wins, even None (cache_cost always runs the agent user)
        if name in overrides:
            return overrides[name]
        value = getattr(params, name, None)
        return getattr(cfg, name) if value is None else value

    locustfile = pick("locustfile")
    prompts = tuple(load_prompts(ctx.config.path(cfg.prompts))) if not locustfile else ()
    try:
        return LoadPlan(
            host=ctx.stack.lb_url,
            users=int(pick("users")),
            spawn_rate=float(pick("spawn_rate")),
            duration_s=float(pick("duration_s")),
            shape=pick("shape"),
            steps=overrides.get("steps", params.steps),
            repeat_ratio=float(pick("repeat_ratio")),
            hot_set=overrides.get("hot_set", params.hot_set),
            prompts=prompts,
            workers=int(pick("workers")),
            locustfile=str(ctx.config.path(locustfile)) if locustfile else None,
            user_rps=overrides["user_rps"] if "user_rps" in overrides else pick("user_rps"),
            client_prefix=f"av-{uuid.uuid4().hex[:8]}",
            seed=int(overrides.get("seed", 0)),
            contract=AgentContract.from_config(ctx.config).to_json(),
        )
    except ValueError as exc:
        raise ScenarioError(f"load: {exc}") from None


def _log_path(ctx: ScenarioContext, name: str) -> Path | None:
    report_dir = getattr(ctx, "report_dir", None)
    if report_dir is None:
        return None
    return Path(report_dir) / "load" / f"{name}-{time.strftime('%H%M%S')}.log"


def start_child(ctx: ScenarioContext, plan: LoadPlan, name: str,
                **kwargs: Any) -> LoadDriver:
    """A driver for ``plan`` whose Locust child is started now (it gets ready while the
    caller measures what comes before the load) and closed after the scenario if it never
    ran; its log is the run's ``name`` log."""
    driver = LoadDriver(plan, say=ctx.say, log_path=_log_path(ctx, name), run=ctx.stack.run,
                        **kwargs).start()
    ctx.defer(f"stop the {name} load child", driver.close)
    return driver


def _ledger_cost(ctx: ScenarioContext, prices: PriceTable, before: dict[str, Any]) -> float:
    return prices.cost(LedgerDelta.between(before, ctx.ledger())).total_usd


# --------------------------------------------------------------------------- load


LOAD_FACTS = (
    "requests", "failures", "rps", "p50_ms", "p95_ms", "p99_ms", "avg_ms", "max_ms",
    "error_ratio", "users", "workers", "duration_s", "status_429", "status_5xx",
    "aborted", "abort_reason", "budget_exceeded", "budget_usd",
    "slo_violations", "slo_violation",
    "ledger_llm_requests", "ledger_tokens", "ledger_prompt_tokens",
    "ledger_completion_tokens", "ledger_embedding_tokens",
    "metric_tokens", "tokens_agree", "token_mismatch_ratio", "token_mismatch",
    "cost_usd", "metric_cost_usd", "cost_per_request_usd", "cost_per_1k_requests_usd",
    "cost_violations", "cost_violation",
    "cache_hits", "cache_misses", "cache_hit_ratio", "metric_cache_hit_ratio",
    "cache_hit_llm_calls", "max_completion_tokens", "max_tokens_limit",
    "calls_without_max_tokens",
)


def cost_violations(cost_cfg: Any, *, cost_usd: float, per_request: float | None,
                    budget_usd: float | None) -> list[str]:
    """The config's cost objectives a run broke, as readable reasons."""
    out = []
    breach = Budget(budget_usd).breach(cost_usd)
    if breach:
        out.append(breach)
    limit = cost_cfg.max_cost_per_request_usd
    if limit is not None and per_request is not None and per_request > limit:
        out.append(f"cost per request {format_usd(per_request)} > {format_usd(limit)}")
    limit = cost_cfg.max_cost_per_1k_requests_usd
    if limit is not None and per_request is not None and per_request * 1000 > limit:
        out.append(f"cost per 1k requests {format_usd(per_request * 1000)} > "
                   f"{format_usd(limit)}")
    return out


@step("load", params=LoadParams, facts=LOAD_FACTS)
def load(ctx: ScenarioContext, params: LoadParams) -> dict[str, Any]:
    """Locust load through the load balancer, with SLO and cost gates (see module)."""
    config = ctx.config
    plan = plan_from_config(ctx, params)
    prices = PriceTable.from_config(config.cost)
    budget_usd = params.budget_usd if params.budget_usd is not None else config.cost.budget_usd
    budget = Budget(budget_usd)
    slo = config.slo.merged(params.slo)
    abort_on_fail = (params.abort_on_fail if params.abort_on_fail is not None
                     else config.slo.abort_on_fail)
    slo_abort = SLOAbort(slo, params.warmup_s, params.warmup_requests)

    mapping = config.monitoring.metrics
    # the child loads Locust while the figures to compare against are read (a fresh scrape
    # takes up to a scrape interval): its users start only at run()
    driver = start_child(ctx, plan, "load")
    ledger_before = ctx.ledger()
    metrics_before = (read_metrics(ctx.prometheus, mapping, time.time(), params.metrics_timeout_s)
                      if params.check_metrics else None)
    state = {"budget": False}

    def poll() -> str | None:
        if budget.limit_usd is None:
            return None
        reason = budget.breach(_ledger_cost(ctx, prices, ledger_before))
        if reason:
            state["budget"] = True
        return reason

    shape = plan.shape + (f" x{plan.steps}" if plan.shape == "step" else "")
    ctx.say(f"  load: {plan.users} users ({shape}, spawn {plan.spawn_rate:g}/s) for "
            f"{plan.duration_s:g}s against {plan.host}, repeat ratio {plan.repeat_ratio:g}"
            + (f", {plan.workers} Locust workers" if plan.workers else "")
            + (f", budget {format_usd(budget_usd)}" if budget_usd is not None else "")
            + (", abort on SLO breach" if abort_on_fail else ""))
    first: dict[str, float] = {}  # the load's t=0 on the wall clock, for the report's plots
    run = driver.run(
        abort_on=slo_abort.check if abort_on_fail else None, poll=poll,
        on_snapshot=lambda snap: first.setdefault("t0", time.time() - snap.t))
    ended = time.time()
    result = run.result
    ctx.waited(result.duration_s, "load")
    ctx.say(f"  {result.summary()}")
    _raise_contract_errors(result.errors)

    delta = LedgerDelta.between(ledger_before, settled_ledger(ctx.ledger))
    cost = prices.cost(delta)
    if cost.unpriced:
        ctx.say(f"  no price for {', '.join(cost.unpriced)} in cost.prices: counted as $0")
    per_request = cost.total_usd / result.requests if result.requests else None

    facts: dict[str, Any] = {
        "requests": result.requests, "failures": result.failures,
        "rps": round(result.rps, 2), "p50_ms": result.p50_ms, "p95_ms": result.p95_ms,
        "p99_ms": result.p99_ms, "avg_ms": round(result.avg_ms, 2),
        "max_ms": round(result.max_ms, 1), "error_ratio": round(result.error_ratio, 6),
        "users": result.users, "workers": result.workers,
        "duration_s": round(result.duration_s, 2),
        "status_429": result.status_codes.get("429", 0),
        "status_5xx": sum(n for code, n in result.status_codes.items() if code.startswith("5")),
        "aborted": run.aborted, "abort_reason": run.abort_reason,
        # over budget: stopped for it, or went over between the last poll and the end
        "budget_exceeded": state["budget"] or budget.breach(cost.total_usd) is not None,
        "budget_usd": budget_usd,
        "ledger_llm_requests": delta.total("chat_requests"),
        "ledger_tokens": delta.tokens,
        "ledger_prompt_tokens": delta.total("prompt_tokens"),
        "ledger_completion_tokens": delta.total("completion_tokens"),
        "ledger_embedding_tokens": delta.total("embedding_tokens"),
        "cost_usd": round(cost.total_usd, 6),
        "cost_per_request_usd": round(per_request, 8) if per_request is not None else None,
        "cost_per_1k_requests_usd": (round(per_request * 1000, 6)
                                     if per_request is not None else None),
        "cache_hits": result.cache_hits, "cache_misses": result.cache_misses,
        "cache_hit_ratio": (round(result.cache_hit_ratio, 4)
                            if result.cache_hit_ratio is not None else None),
        "max_completion_tokens": result.max_completion_tokens,
        "max_tokens_limit": config.model.max_tokens,
        # the LLM stub answers an unbounded call long, as a model does: what it costs
        # shows in cost_per_request_usd
        "calls_without_max_tokens": delta.total("calls_without_max_tokens"),
    }
    if not plan.locustfile:
        # every fresh answer is one chat completion; anything beyond is an LLM call made
        # for a request the cache should have answered (or one nobody saw answered)
        facts["cache_hit_llm_calls"] = delta.total("chat_requests") - result.cache_misses
        facts.update(_unreadable_reply_facts(ctx))

    slo_reasons = slo_breaches(result, slo)
    facts["slo_violations"] = len(slo_reasons)
    facts["slo_violation"] = "; ".join(slo_reasons) or "none"
    cost_reasons = cost_violations(config.cost, cost_usd=cost.total_usd,
                                   per_request=per_request, budget_usd=budget_usd)
    facts["cost_violations"] = len(cost_reasons)
    facts["cost_violation"] = "; ".join(cost_reasons) or "none"
    for reason in slo_reasons + cost_reasons:
        ctx.say(f"  objective missed: {reason}")

    if metrics_before is not None:
        # the agent's counters as of the load's end: a wait of up to a scrape interval
        # (the one before the load ran beside the Locust child's start)
        with ctx.waiting("fresh scrape"):
            wait_for_scrape(ctx.prometheus, ended, params.metrics_timeout_s)
        after = read_metrics(ctx.prometheus, mapping, ended, params.metrics_timeout_s)
        if not (after.scraped and metrics_before.scraped):
            ctx.say(f"  Prometheus did not scrape every replica within "
                    f"{params.metrics_timeout_s:g}s; comparing the latest values")
        facts.update(metric_facts(ctx, delta, metrics_before, after))
        metric = mapping.tokens.name if mapping.tokens else "no token metric"
        ctx.say(f"  tokens: ledger {delta.tokens:,}, {metric} {facts['metric_tokens']} "
                f"({facts['token_mismatch']}); cost {format_usd(cost.total_usd)}"
                + (f", {format_usd(per_request * 1000)} per 1k requests"
                   if per_request is not None else ""))

    for name in LOAD_FACTS:  # the same shape every time; a fact not measured is None
        facts.setdefault(name, None)
    # latency and throughput over time for the HTML report (named like the step's facts)
    suffix = f"_{params.label}" if getattr(params, "label", None) else ""
    t0 = first.get("t0")
    ctx.series["p95_ms" + suffix] = TimeSeries(run.series("interval_p95_ms"), unit="ms", t0=t0,
                                               threshold=slo.p95_ms, threshold_label="SLO p95",
                                               gate="p95_ms" + suffix)
    ctx.series["rps" + suffix] = TimeSeries(run.series("interval_rps"), unit="req/s", t0=t0,
                                            threshold=slo.min_rps, threshold_label="SLO min rps",
                                            gate="rps" + suffix)
    ctx.series["users" + suffix] = TimeSeries(run.series("users"), unit="users", t0=t0)
    return facts


def _raise_contract_errors(errors: dict[str, int]) -> None:
    """Answers the users could not read through the contract end the step, with the one
    that quotes the reply."""
    marker = "the agent's reply does not match stack.agent.contract"
    mismatched = {k: n for k, n in errors.items() if marker in k}
    if mismatched:
        # Locust's key is "POST /path: <message>"; with workers the message arrives as
        # the repr of its CatchResponseError
        first = max(mismatched, key=len)
        first = first[first.index(marker):].removesuffix("')").removesuffix('")')
        raise ContractError(f"{first} ({sum(mismatched.values())} load request(s) alike)")


def _unreadable_reply_facts(ctx: ScenarioContext) -> dict[str, Any]:
    """The load facts the agent's reply cannot give, as inconclusive."""
    out: dict[str, Any] = {}
    if not ctx.contract.maps("cached"):
        why = Inconclusive("stack.agent.contract.reply.cached is null: the reply does not "
                           "say whether it came from the cache")
        out.update(cache_hits=why, cache_misses=why, cache_hit_ratio=why,
                   cache_hit_llm_calls=why)
    if not ctx.contract.maps("completion_tokens"):
        out["max_completion_tokens"] = Inconclusive(
            "stack.agent.contract.reply.completion_tokens is null: the reply does not "
            "report its usage")
    return out


def metric_facts(ctx: ScenarioContext, delta: LedgerDelta, before: MetricReading,
                 after: MetricReading) -> dict[str, Any]:
    """The agent's own counters against the LLM ledger: tokens (kind by kind, or in
    total), cache hit ratio and dollars. A counter the agent does not export (null in
    ``monitoring.metrics``, or missing from a replica's /metrics) gives inconclusive
    facts with the reason."""
    mapping = ctx.config.monitoring.metrics
    exported, where = replica_exports(ctx.stack, ctx.contract.metrics_path)
    out: dict[str, Any] = {}
    why = not_exported(mapping, "tokens", exported, where)
    if why or mapping.tokens is None or before.tokens is None or after.tokens is None:
        reason = Inconclusive(why or "no token counter")
        out.update(metric_tokens=reason, tokens_agree=reason, token_mismatch_ratio=reason,
                   token_mismatch=reason)
    else:
        tokens = mapping.tokens
        if tokens.compare == "kind" and tokens.kind_label:
            check = check_tokens(delta.by_kind(),
                                 counter_increase(before.tokens, after.tokens,
                                                  by=tokens.kind_label),
                                 name=tokens.name)
        else:
            metric = counter_increase(before.tokens, after.tokens, by="__none__")
            check = check_tokens({"total": delta.tokens}, {"total": sum(metric.values())},
                                 name=tokens.name)
        out.update(metric_tokens=check.metric_total, tokens_agree=check.agree,
                   token_mismatch_ratio=check.mismatch_ratio, token_mismatch=check.message)
    why = not_exported(mapping, "cache", exported, where)
    if why or mapping.cache is None or before.cache is None or after.cache is None:
        out["metric_cache_hit_ratio"] = Inconclusive(why or "no cache counter")
    else:
        cache = counter_increase(before.cache, after.cache, by=mapping.cache.label)
        hits, misses = cache.get(mapping.cache.hit, 0.0), cache.get(mapping.cache.miss, 0.0)
        out["metric_cache_hit_ratio"] = round(hits / (hits + misses), 4) if hits + misses \
            else None
    why = not_exported(mapping, "cost", exported, where)
    if why or mapping.cost is None or before.cost is None or after.cost is None:
        out["metric_cost_usd"] = Inconclusive(why or "no cost counter")
    else:
        out["metric_cost_usd"] = round(sum(counter_increase(
            before.cost, after.cost, by="__none__").values()), 6)
    return out


# --------------------------------------------------------------------------- cache_cost


class CacheCostParams(StepParams):
    """Two paced loads of the built-in agent user, at a low and a high repeat ratio."""

    low_repeat_ratio: float = Field(0.0, ge=0, le=1)
    high_repeat_ratio: float = Field(0.9, ge=0, le=1)
    users: int = Field(4, ge=1, le=1000)
    duration_s: float = Field(5.0, gt=0, le=3600)
    hot_set: int = Field(3, ge=1, le=100)
    user_rps: float | None = Field(5.0, gt=0)
    workers: int | None = Field(None, ge=0, le=64)


def _measure(ctx: ScenarioContext, prices: PriceTable, driver: LoadDriver) -> dict[str, Any]:
    plan = driver.plan
    before = ctx.ledger()
    run = driver.run()
    result = run.result
    ctx.waited(result.duration_s, "load")
    _raise_contract_errors(result.errors)
    delta = LedgerDelta.between(before, settled_ledger(ctx.ledger))
    cost = prices.cost(delta).total_usd
    ok = result.cache_hits + result.cache_misses
    out = {
        "requests": result.requests, "failures": result.failures,
        "hit_ratio": result.cache_hits / ok if ok else 0.0,
        "per_request": cost / result.requests if result.requests else 0.0,
        "llm_calls_beyond_misses": delta.total("chat_requests") - result.cache_misses,
    }
    ctx.say(f"  repeat ratio {plan.repeat_ratio:g}: {result.requests:,} requests, cache hit "
            f"ratio {out['hit_ratio']:.2f}, {delta.total('chat_requests')} LLM calls, "
            f"{format_usd(out['per_request'])} per request")
    return out


@step("cache_cost", params=CacheCostParams,
      facts=("cache_cost_low_hit_ratio", "cache_cost_high_hit_ratio",
             "cache_cost_low_per_request_usd", "cache_cost_high_per_request_usd",
             "cache_cost_ratio", "cache_cost_hit_llm_calls", "cache_cost_failures"))
def cache_cost(ctx: ScenarioContext, params: CacheCostParams) -> dict[str, Any]:
    """Two short loads, few and many repeats: cost per request falls with the hit ratio."""
    if params.high_repeat_ratio <= params.low_repeat_ratio:
        raise ScenarioError(f"cache_cost: high_repeat_ratio ({params.high_repeat_ratio}) must "
                            f"be above low_repeat_ratio ({params.low_repeat_ratio})")
    prices = PriceTable.from_config(ctx.config.cost)
    base = LoadParams(users=params.users, duration_s=params.duration_s, shape="constant",
                      workers=params.workers, spawn_rate=float(params.users * 2),
                      user_rps=params.user_rps)
    low = plan_from_config(ctx, base, repeat_ratio=params.low_repeat_ratio,
                           hot_set=params.hot_set, locustfile=None)
    high = plan_from_config(ctx, base, repeat_ratio=params.high_repeat_ratio,
                            hot_set=params.hot_set, locustfile=None)
    # both children load Locust while the hot set is answered once (so a repeat is a hit
    # from its first ask) and while the first load runs
    drivers = [start_child(ctx, low, "cache-cost-low"),
               start_child(ctx, high, "cache-cost-high")]
    for prompt in low.prompts[:params.hot_set]:
        reply = ctx.ask(prompt)
        if not reply.ok:
            raise ScenarioError(f"warming the cache: the chat request answered "
                                f"{reply.describe()}")
    a = _measure(ctx, prices, drivers[0])
    b = _measure(ctx, prices, drivers[1])
    ratio = b["per_request"] / a["per_request"] if a["per_request"] else None
    facts: dict[str, Any] = {
        "cache_cost_low_hit_ratio": round(a["hit_ratio"], 4),
        "cache_cost_high_hit_ratio": round(b["hit_ratio"], 4),
        "cache_cost_low_per_request_usd": round(a["per_request"], 8),
        "cache_cost_high_per_request_usd": round(b["per_request"], 8),
        "cache_cost_ratio": round(ratio, 4) if ratio is not None else None,
        "cache_cost_hit_llm_calls": a["llm_calls_beyond_misses"] + b["llm_calls_beyond_misses"],
        "cache_cost_failures": a["failures"] + b["failures"],
    }
    if not ctx.contract.maps("cached"):
        # cost per request is the ledger's; hit ratios come from the replies
        why = _unreadable_reply_facts(ctx)["cache_hits"]
        facts.update(cache_cost_low_hit_ratio=why, cache_cost_high_hit_ratio=why,
                     cache_cost_hit_llm_calls=why)
    return facts


# --------------------------------------------------------------------------- background


BACKGROUND_KEY = "background_load"


class LoadStartParams(StepParams):
    """A background load; each ``None`` falls back to the config's ``load:``."""

    users: int | None = Field(None, ge=1, le=10_000)
    spawn_rate: float | None = Field(None, gt=0)
    user_rps: float | None = Field(None, gt=0)
    repeat_ratio: float | None = Field(None, ge=0, le=1)
    hot_set: int = Field(5, ge=1, le=1000)
    max_duration_s: float = Field(3600.0, gt=0, le=86_400,
                                  description="stopped by load_stop, or after this long")


def prepare_background_load(ctx: ScenarioContext, params: LoadStartParams,
                            name: str) -> BackgroundLoad:
    """A background load for ``params`` whose child is loading Locust now; its users start
    at ``start()`` (see :func:`start_background_load`). Stopped after the scenario if still
    on, and its child if it never ran."""
    plan = plan_from_config(ctx, LoadParams(users=params.users, spawn_rate=params.spawn_rate,
                                            user_rps=params.user_rps,
                                            repeat_ratio=params.repeat_ratio,
                                            duration_s=params.max_duration_s,
                                            shape="constant"),
                            hot_set=params.hot_set, locustfile=None)
    load = BackgroundLoad(start_child(ctx, plan, name, progress_interval_s=10.0), name=name)

    def stop_if_running() -> None:
        if load.running:
            load.stop()

    ctx.defer(f"stop the {name} load", stop_if_running)  # runs before the child's close
    return load


def start_background_load(ctx: ScenarioContext, load: BackgroundLoad) -> BackgroundLoad:
    """Start the users of a prepared background load, and say so."""
    plan = load.driver.plan
    load.start()
    ctx.say(f"  {load.name}: {plan.users} users" + (f" at {plan.user_rps:g} requests/s each"
                                                    if plan.user_rps else " unpaced")
            + f" against {plan.host}, in the background")
    return load


def background_load(ctx: ScenarioContext, params: LoadStartParams, name: str) -> BackgroundLoad:
    """Start a background load for ``params`` (stopped after the scenario if still on)."""
    return start_background_load(ctx, prepare_background_load(ctx, params, name))


@step("load_start", params=LoadStartParams, facts=())
def load_start(ctx: ScenarioContext, params: LoadStartParams) -> dict[str, Any]:
    """Start Locust load in the background; the next steps run under it."""
    if BACKGROUND_KEY in ctx.state:
        raise ScenarioError("load_start: a background load is already running (load_stop "
                            "ends it)")
    ctx.state[BACKGROUND_KEY] = background_load(ctx, params, "background")
    return {}


@step("load_stop", params=StepParams,
      facts=("background_requests", "background_failures", "background_rps",
             "background_p95_ms", "background_status_5xx"))
def load_stop(ctx: ScenarioContext, params: StepParams) -> dict[str, Any]:
    """Stop the background load and measure what it saw."""
    load: BackgroundLoad | None = ctx.state.pop(BACKGROUND_KEY, None)
    if load is None:
        raise ScenarioError("load_stop without load_start")
    result = load.stop().result
    ctx.say(f"  background load: {result.summary()}")
    return {"background_requests": result.requests, "background_failures": result.failures,
            "background_rps": round(result.rps, 2), "background_p95_ms": result.p95_ms,
            "background_status_5xx": sum(n for code, n in result.status_codes.items()
                                         if code.startswith("5"))}
