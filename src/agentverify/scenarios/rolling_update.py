"""Rollout rehearsals under steady traffic: rolling update, rollback, scale.

Steps:

=================  ========================================================================
``probe_start``    start steady traffic through the load balancer (``rps``, default 25)
``probe_stop``     stop it; facts: probe_requests, failed_requests, longest_gap_s, ...
``rolling_update`` replace replicas one at a time with ``version``; a replica that fails
                   its health check, or answers errors while it bakes, stops the rollout
                   and (``auto_rollback``) every replica goes back to the old version
``rollback``       every replica back to ``version`` (a tag), one at a time
``scale``          scale the agent to ``replicas`` under traffic
=================  ========================================================================

A rollout drains each replica in nginx before stopping it (the new one is added and the
old one removed in one reload, and the old process is stopped gracefully afterwards), so
zero failed requests is achievable and is the default gate.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from pydantic import Field

from agentverify.errors import ContractError, ScenarioError
from agentverify.logrotate import count_request_ids, log_files
from agentverify.report.journal import TimeSeries
from agentverify.scenarios.probe import Probe, ProbeReport
from agentverify.scenarios.registry import StepParams, step

if TYPE_CHECKING:
    from agentverify.scenarios.runner import ScenarioContext

__all__ = ["PROBE_KEY"]

PROBE_KEY = "probe"


def _final_version(versions: list[str]) -> str:
    return versions[0] if versions and len(set(versions)) == 1 else "mixed"


class ProbeStartParams(StepParams):
    rps: float = Field(25.0, gt=0, le=2000)
    message: str = "How do I reset my password?"
    keepalive: bool = False
    unique: bool = Field(False, description="every request a question of its own: never "
                                            "answered from the cache, so each reaches the LLM")
    timeout_s: float = Field(10.0, gt=0, le=600, description="a request not answered within "
                             "this long counts as failed (an agent whose answers take longer "
                             "by design, e.g. a slow model, needs more)")


@step("probe_start", params=ProbeStartParams)
def probe_start(ctx: ScenarioContext, params: ProbeStartParams) -> dict[str, Any]:
    """Start steady traffic through the load balancer, recording every request."""
    if PROBE_KEY in ctx.state:
        raise ScenarioError("a probe is already running (probe_stop it first)")
    probe = Probe(ctx.stack.lb_url, rps=params.rps, message=params.message,
                  contract=ctx.contract, keepalive=params.keepalive,
                  unique=params.unique, timeout=params.timeout_s).start()
    ctx.state[PROBE_KEY] = probe
    # an interrupted scenario must not leave the probe's threads sending
    ctx.defer("stop the probe", probe.stop)
    ctx.say(f"  probe sending {params.rps:g} requests/s to {ctx.stack.lb_url}")
    return {}


@step("probe_stop", facts=("probe_requests", "failed_requests", "retried_requests",
                           "probe_error_ratio",
                           "longest_gap_s",
                           "duration_s", "probe_rps", "probe_p95_ms", "versions_seen",
                           "final_versions", "final_version"))
def probe_stop(ctx: ScenarioContext, params: StepParams) -> dict[str, Any]:
    """Stop the probe; report every request it sent."""
    probe: Probe | None = ctx.state.pop(PROBE_KEY, None)
    if probe is None:
        raise ScenarioError("probe_stop without probe_start")
    report = probe.stop()
    if report.contract_problem:
        raise ContractError(report.contract_problem)
    t0 = time.time() - probe.elapsed  # the probe's t=0 on the wall clock, for the report
    ctx.series["probe latency ms"] = TimeSeries(report.latency_series(), unit="ms", t0=t0,
                                                gate="probe_p95_ms")
    ctx.series["probe failed requests"] = TimeSeries(report.failure_series(), unit="failed/s",
                                                     t0=t0, gate="failed_requests")
    facts = report.facts()
    facts["final_versions"] = ctx.stack.versions
    facts["final_version"] = _final_version(ctx.stack.versions)
    ctx.say(f"  probe: {report.requests} requests, {report.failed} failed, "
            f"{report.retried} retried on another replica, longest gap "
            f"{report.longest_gap_s:.3f}s, statuses {dict(report.statuses)}, "
            f"versions {dict(report.versions)}")
    where = _where_logged(ctx, report)
    if where:
        spread = Counter(where.values())
        ctx.say("  failed requests with an id: " + ", ".join(
            f"{n} {place}" for place, n in spread.most_common()))
    for line in report.failures(where=where):
        ctx.say(f"  failed request {line}")
    return facts


def _where_logged(ctx: ScenarioContext, report: ProbeReport) -> dict[str, str]:
    """Where each failed probe request (by the id it carried) is in the agents' request
    logs: an instance that logged it got it and finished it, too late or with an error;
    none did: it never reached an agent's handler, or the agent had not finished it when
    the probe stopped. Empty when that cannot be told: no request logs, or an agent that
    replaces the ids it is sent (the probe's replies show which). Diagnostics only: a log
    that cannot be read is skipped, never an error of the step."""
    failed = {s.log_id for s in report.samples if not s.ok and s.log_id}
    logs = ctx.contract.section.logs
    if not failed or not logs.request_id_header:
        return {}
    replied = [s for s in report.samples if s.request_id and s.sent_id]
    if replied and not any(s.request_id == s.sent_id for s in replied):
        ctx.say("  the failed requests cannot be looked for in the agents' logs: the agent "
                f"replaces the {logs.request_id_header} it is sent")
        return {}
    found: dict[str, list[str]] = {}
    searched = 0
    prefix = os.path.commonprefix(sorted(failed))
    for name, path in ctx.stack.agent_logs():
        try:
            files = log_files(path)
            if not files:
                continue
            count = count_request_ids(files, fmt=logs.format, field=logs.request_id_field,
                                      wanted=failed, containing=prefix)
        except Exception as exc:  # noqa: BLE001 - one unreadable log must not hide the others
            ctx.say(f"  {name}'s request log was not searched: {exc}")
            continue
        searched += 1
        for request_id in failed:
            if count.ids[request_id]:
                found.setdefault(request_id, []).append(name)
    if not searched:
        return {}
    return {i: f"logged by {', '.join(found[i])}" if i in found else "in no agent's log"
            for i in failed}


def _probe(ctx: ScenarioContext) -> Probe | None:
    return ctx.state.get(PROBE_KEY)


class RolloutParams(StepParams):
    version: str = Field(..., min_length=1)
    bake_s: float = Field(1.0, ge=0, le=600, description="watch each new replica this long")
    max_error_ratio: float = Field(0.0, ge=0, le=1)
    min_bake_requests: int = Field(3, ge=0)
    auto_rollback: bool = True
    health_timeout_s: float | None = Field(None, gt=0, description="default: stack.start_timeout")
    drain: bool = Field(True, description="switch nginx away from a replica before stopping "
                                          "it; false stops it first, as many hand-written "
                                          "deploy scripts do (a defect, for proving the gate)")


ROLLOUT_FACTS = ("rollout_completed", "rolled_back", "rollout_seconds", "replicas_updated",
                 "rollout_failure", "from_version", "to_version", "rollback_seconds",
                 "failed_after_rollback", "unclean_stops")


def _bake(ctx: ScenarioContext, version: str, replica: str, params: RolloutParams) -> str | None:
    """Watch the probe's answers from the new replica; a reason to stop, or None.

    Answers are told apart by the replica the reply names; for an agent whose reply
    names none, by the version (every replica on the new version has been baked before).
    """
    probe = _probe(ctx)
    if probe is None or params.bake_s == 0:
        return None
    by_replica = ctx.contract.maps("replica")
    since = probe.elapsed
    deadline = time.monotonic() + params.bake_s
    with ctx.waiting("bake"):
        while True:
            time.sleep(min(0.1, params.bake_s))
            report = probe.snapshot()
            if report.contract_problem:
                return f"the probe cannot read the replies: {report.contract_problem}"
            replica_samples = [s for s in report.samples if s.t >= since and
                               (s.replica == replica if by_replica else s.version == version)]
            failed = sum(1 for s in replica_samples if not s.ok)
            total = len(replica_samples)
            if total and failed / total > params.max_error_ratio and \
                    total >= params.min_bake_requests:
                return (f"{replica} at {version} answered {failed} of {total} requests with "
                        f"errors while baking (allowed ratio {params.max_error_ratio:g})")
            if time.monotonic() >= deadline:
                return None


def do_rollout(ctx: ScenarioContext, params: RolloutParams) -> dict[str, Any]:
    stack = ctx.stack
    rollout = stack.rolling_update(
        params.version, health_timeout=params.health_timeout_s, drain=params.drain,
        after_each=lambda new: _bake(ctx, params.version, new.instance, params))
    facts: dict[str, Any] = {"from_version": rollout.from_version,
                             "to_version": params.version,
                             "rollout_completed": rollout.completed, "rolled_back": False,
                             "replicas_updated": len(rollout.steps),
                             "rollout_failure": rollout.failure or "",
                             "rollout_seconds": round(rollout.seconds, 3),
                             "rollback_seconds": 0.0, "failed_after_rollback": 0,
                             # ending by SIGTERM (exit -15 / 143) is a clean stop
                             "unclean_stops": len(rollout.unclean_stops)}
    for stopped in rollout.unclean_stops:
        ctx.say(f"  {stopped.instance} at {stopped.from_version} did not stop cleanly "
                f"(exit status {stopped.exit_code})")
    if rollout.completed:
        return facts
    ctx.say(f"  rollout stopped: {rollout.failure}")
    if "did not become healthy" in (rollout.failure or ""):  # a deliberate timeout
        ctx.waited(params.health_timeout_s or ctx.config.stack.start_timeout, "health timeout")
    if params.auto_rollback and any(v != rollout.from_version for v in stack.versions):
        ctx.say(f"  rolling back to {rollout.from_version}")
        t1 = time.monotonic()
        stack.rollback(rollout.from_version)
        facts["rollback_seconds"] = round(time.monotonic() - t1, 3)
        facts["rolled_back"] = True
        probe = _probe(ctx)
        if probe is not None:
            done_at = probe.elapsed
            ctx.wait(max(params.bake_s, 0.5), "bake")  # watch the recovered fleet
            facts["failed_after_rollback"] = probe.snapshot().failed_after(done_at)
    return facts


@step("rolling_update", params=RolloutParams, facts=ROLLOUT_FACTS, timeline="rollout")
def rolling_update(ctx: ScenarioContext, params: RolloutParams) -> dict[str, Any]:
    """Replace replicas one at a time with ``version``; roll back automatically on failure."""
    return do_rollout(ctx, params)


class RollbackParams(StepParams):
    version: str = Field(..., min_length=1)


@step("rollback", params=RollbackParams,
      facts=("rollback_seconds", "all_on_version", "rollback_replicas"), timeline="rollout")
def rollback(ctx: ScenarioContext, params: RollbackParams) -> dict[str, Any]:
    """Every replica back to the tagged ``version``, one at a time, under traffic."""
    rollout = ctx.stack.rollback(params.version)
    versions = ctx.stack.versions
    ctx.say(f"  rolled back {len(rollout.steps)} replica(s) to {params.version} in "
            f"{rollout.seconds:.1f}s")
    return {"rollback_seconds": round(rollout.seconds, 3),
            "all_on_version": all(v == params.version for v in versions),
            "rollback_replicas": len(rollout.steps)}


class ScaleParams(StepParams):
    replicas: int = Field(..., ge=1, le=32)


@step("scale", params=ScaleParams, facts=("scale_seconds", "replicas_after"), timeline="rollout")
def scale(ctx: ScenarioContext, params: ScaleParams) -> dict[str, Any]:
    """Scale the agent to ``replicas`` (the seed's `--scale agent=N`) under traffic."""
    before = len(ctx.stack.replicas)
    seconds = ctx.stack.scale(params.replicas)
    ctx.say(f"  scaled {before} -> {len(ctx.stack.replicas)} replicas in {seconds:.1f}s")
    return {"scale_seconds": round(seconds, 3), "replicas_after": len(ctx.stack.replicas)}

