"""The seed's day-to-day operations, rehearsed under a running probe.

================  ========================================================================
``model_update``  the seed's ``update_model``: ``model.model_name`` (and other ``model``
                  keys) changed in the agent's config.yaml and every replica restarted one
                  at a time, drained (:func:`agentverify.agent_ops.reconfigure`); the LLM
                  ledger must show the new model for every chat call after the last
                  replica switched, and the probe's traffic is priced before and after
``rotate_logs``   the seed's ``rotate_logs``: every replica's request log rotated by
                  logrotate (:func:`agentverify.agent_ops.rotate_logs`); every request the
                  probe sent meanwhile must be in the old or the new file exactly once
================  ========================================================================

Both need a probe (``probe_start`` before them): its failed requests are the gate that
the fleet kept serving, and its replies are what is looked for in the ledger and the
logs. The rolling ``restart`` step is in :mod:`agentverify.faults.steps`.

A shared stack gets its configured model back after the scenario, even after a
failure: the session's baseline restore (:func:`~agentverify.scenarios.runner.restore_baseline`)
puts the agent configuration back when it differs.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from pydantic import Field

from agentverify import agent_ops
from agentverify.cost import LedgerDelta, PriceTable, format_usd
from agentverify.errors import AgentOpError, ScenarioError
from agentverify.gates import Inconclusive
from agentverify.scenarios.cost_controls import ledger_calls
from agentverify.scenarios.registry import StepParams, step
from agentverify.scenarios.rolling_update import PROBE_KEY

if TYPE_CHECKING:
    from agentverify.scenarios.probe import Probe, ProbeReport
    from agentverify.scenarios.runner import ScenarioContext

__all__: list[str] = []


def _probe(ctx: ScenarioContext, step_name: str) -> Probe:
    probe: Probe | None = ctx.state.get(PROBE_KEY)
    if probe is None:
        raise ScenarioError(f"{step_name} is measured under traffic: start a probe before it "
                            "(- probe_start: {rps: 10, unique: true})")
    return probe


def _answered_between(report: ProbeReport, t0: float, t1: float) -> int:
    return sum(1 for s in report.samples if t0 <= s.t < t1 and s.ok)


# --------------------------------------------------------------------------- model_update


class ModelUpdateParams(StepParams):
    """The model to switch to, other ``model`` keys with it, and the pricing windows."""

    model_name: str = Field(..., min_length=1)
    model: dict[str, Any] = Field(default_factory=dict, description=(
        "other keys of the model section changed with it (temperature, max_tokens ...)"))
    measure_s: float = Field(3.0, gt=0, le=600, description=(
        "seconds of probe traffic priced before and after the switch"))


MODEL_UPDATE_FACTS = (
    "model_update_completed", "model_before", "model_after", "model_update_seconds",
    "model_update_replicas", "calls_after_update", "calls_not_on_new_model",
    "models_after_update", "cost_per_request_before_usd", "cost_per_request_after_usd",
    "cost_per_request_change", "model_update_failure")


def _priced_window(ctx: ScenarioContext, probe: Probe, prices: PriceTable,
                   seconds: float, label: str) -> tuple[Any, int, list[dict[str, Any]]]:
    """Cost per request of ``seconds`` of probe traffic: the LLM calls made meanwhile,
    priced, over the requests answered meanwhile (inconclusive when unpriced)."""
    since = ledger_calls(ctx, 0, limit=1)["last_seq"]
    t0 = probe.elapsed
    ctx.wait(seconds, f"probe priced {label}")
    t1 = probe.elapsed
    calls = ledger_calls(ctx, since)["calls"]
    answered = _answered_between(probe.snapshot(), t0, t1)
    cost = prices.cost(LedgerDelta.of_calls(calls))
    if cost.unpriced:
        return (Inconclusive(f"no price for {', '.join(cost.unpriced)} in cost.prices"),
                answered, calls)
    if not answered:
        return Inconclusive(f"the probe had no answer {label} the switch"), answered, calls
    return round(cost.total_usd / answered, 8), answered, calls


@step("model_update", params=ModelUpdateParams, facts=MODEL_UPDATE_FACTS, timeline="rollout")
def model_update(ctx: ScenarioContext, params: ModelUpdateParams) -> dict[str, Any]:
    """Switch the fleet to another model with a rolling restart under the probe's traffic."""
    probe = _probe(ctx, "model_update")
    before = (ctx.stack.agent_config or ctx.config).model.model_name
    if before == params.model_name:
        raise ScenarioError(f"model_update: the agent already runs {before}")
    prices = PriceTable.from_config(ctx.config.cost)
    cost_before, answered_before, _ = _priced_window(ctx, probe, prices, params.measure_s,
                                                     "before")
    overrides = {"model.model_name": params.model_name,
                 **{f"model.{k}": v for k, v in params.model.items()}}
    try:
        done = agent_ops.reconfigure(ctx.stack, overrides, operation="model_update")
    except AgentOpError as exc:  # the fleet was put back on the previous model
        ctx.say(f"  model_update failed: {exc}")
        return {**dict.fromkeys(MODEL_UPDATE_FACTS), "model_update_completed": False,
                "model_before": before, "model_after": ctx.stack.agent_config.model.model_name,
                "cost_per_request_before_usd": cost_before,
                "model_update_failure": str(exc).splitlines()[0]}
    ctx.say(f"  {done.line()}")
    cost_after, answered_after, calls = _priced_window(ctx, probe, prices, params.measure_s,
                                                       "after")
    # every call logged after the last replica switched was made by a new replica: the
    # old ones were drained and had finished their requests before they stopped
    models = Counter(str(c.get("model")) for c in calls if c.get("endpoint") == "chat")
    others = sum(n for m, n in models.items() if m != params.model_name)
    chat_calls = sum(models.values())
    no_calls = Inconclusive("no chat call reached the LLM after the switch (the probe's "
                            "answers came from the cache: probe_start with unique: true)")
    change: Any = None
    if isinstance(cost_before, float) and isinstance(cost_after, float) and cost_before:
        change = round(cost_after / cost_before, 4)
    ctx.say(f"  {before} -> {params.model_name}: {chat_calls} chat calls after the switch, "
            f"{others} on another model ({dict(models)}); cost per request "
            f"{_usd(cost_before)} ({answered_before} requests) -> {_usd(cost_after)} "
            f"({answered_after} requests)")
    return {
        "model_update_completed": True, "model_before": before,
        "model_after": ctx.stack.agent_config.model.model_name,
        "model_update_seconds": round(done.seconds, 3),
        "model_update_replicas": done.replicas_restarted,
        "calls_after_update": chat_calls,
        "calls_not_on_new_model": others if chat_calls else no_calls,
        "models_after_update": dict(models),
        "cost_per_request_before_usd": cost_before, "cost_per_request_after_usd": cost_after,
        "cost_per_request_change": change, "model_update_failure": None,
    }


def _usd(value: Any) -> str:
    return format_usd(value) if isinstance(value, float) else "?"


# --------------------------------------------------------------------------- rotate_logs


class RotateLogsParams(StepParams):
    """How much of the probe's traffic is logged before and after the rotation."""

    before_s: float = Field(1.0, ge=0, le=600, description="traffic into the old file")
    after_s: float = Field(2.0, gt=0, le=600, description="traffic into the new file")


ROTATE_FACTS = (
    "log_rotated_replicas", "log_rotate_mode", "log_rotate_seconds", "log_requests_checked",
    "log_requests_lost", "log_requests_doubled", "log_reopened", "log_lines_unreadable")


@step("rotate_logs", params=RotateLogsParams, facts=ROTATE_FACTS)
def rotate_logs(ctx: ScenarioContext, params: RotateLogsParams) -> dict[str, Any]:
    """Rotate every replica's request log under traffic; each request the probe got an
    answer to is one line of the old or the new file, and the agent writes the new one."""
    from agentverify.logrotate import count_request_ids, log_files

    probe = _probe(ctx, "rotate_logs")
    logs = ctx.contract.section.logs
    if ctx.config.stack.agent.variables.log_file is None:
        why = Inconclusive("stack.agent.variables.log_file is null: the agent is given no "
                           "request log to rotate")
        return dict.fromkeys(ROTATE_FACTS, why)
    t0 = probe.elapsed
    ctx.wait(params.before_s, "traffic before the rotation")
    rotated_at = time.time()
    done = agent_ops.rotate_logs(ctx.stack)
    ctx.event("operation", f"logrotate ({done.method})", t=rotated_at, end=time.time())
    ctx.say(f"  {done.line()}")
    ctx.wait(params.after_s, "traffic after the rotation")
    t1 = probe.elapsed
    if not probe.wait_answered(t1):
        ctx.say("  some probe requests were still unanswered; counting those answered")
    samples = [s for s in probe.snapshot().samples if t0 <= s.t < t1]
    paths = {r.instance: ctx.stack.agent_log(r.instance) for r in ctx.stack.replicas}
    # the current file of each replica is new (rename) or was emptied (copytruncate):
    # a line in it is one the agent wrote after the rotation
    reopened = all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    facts: dict[str, Any] = {
        "log_rotated_replicas": len(paths), "log_rotate_mode": done.method,
        "log_rotate_seconds": round(done.seconds, 3), "log_reopened": reopened}
    if not logs.request_id_header:
        why = Inconclusive("stack.agent.contract.logs.request_id_header is null: a reply "
                           "cannot be tied to its log line")
        return {**facts, "log_requests_checked": why, "log_requests_lost": why,
                "log_requests_doubled": why, "log_lines_unreadable": why}
    answered = [s for s in samples if s.ok]
    if answered and not any(s.request_id for s in answered):
        raise ScenarioError(f"rotate_logs: the agent's replies carry no {logs.request_id_header} "
                            "header (stack.agent.contract.logs.request_id_header)")
    # a request nginx retried on another replica is logged by both, under the id the probe
    # sent: not a line written twice by one agent, so it is not counted
    wanted = {s.request_id for s in samples if s.request_id and s.attempts <= 1}
    files = [f for p in paths.values() for f in log_files(p)]
    count = count_request_ids(files, fmt=logs.format, field=logs.request_id_field,
                              wanted=wanted)
    lost = sorted(i for i in wanted if count.ids[i] == 0)
    doubled = sorted(i for i in wanted if count.ids[i] > 1)
    ctx.say(f"  {len(wanted)} probe requests answered around the rotation, in "
            f"{len(files)} files: {len(lost)} not logged, {len(doubled)} logged more than "
            f"once; every replica writes its new file: {reopened}"
            + (f"; e.g. lost {lost[:3]}" if lost else "")
            + (f"; e.g. doubled {doubled[:3]}" if doubled else ""))
    return {**facts, "log_requests_checked": len(wanted), "log_requests_lost": len(lost),
            "log_requests_doubled": len(doubled), "log_lines_unreadable": count.unreadable}
