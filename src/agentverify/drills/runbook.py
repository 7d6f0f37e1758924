"""Runbooks executed: the operations of ``runbooks:`` run in order, each timed and checked.

A runbook is data (``runbooks:`` in the config, the seed's three plans by default); this
module runs one on the live stack. Every operation is an operation of the Stack or of
the agent, and each is verified before the next starts:

==================  ==========================================================================
``scale``           ``Stack.scale``; every replica must then answer its health check
``rate_limit``      the agent's fleet-wide per-client limit (every replica reports it)
``switch_llm``      the agent's primary/backup LLM API (every replica reports it)
``clear_cache``     the agent's cached answers deleted
``restart``         ``Stack.restart_agents`` (rolling, drained, under traffic); after
                    ``stop_agents``, the agents started again
``stop_agents``     ``Stack.stop_agents``: out of nginx and stopped (the service is down)
``restore_backup``  the last verified backup restored into the live stack (Redis through
                    ``Stack.replace_data``, Milvus rebuilt through pymilvus)
``notify``          a Slack-style ``{"text": ...}`` to the stack's receiver (and to
                    ``monitoring.alert_webhook`` when it is on 127.0.0.1)
==================  ==========================================================================

A failed operation is notified to the receiver (the seed's ``notify_error``) and raises
:class:`~agentverify.errors.RunbookError` naming the runbook and the operation. What an
operation changes beyond the stack's version and replica count (the rate limit, the
active LLM, the agents stopped) is put back after the scenario, also after a failure;
the session restores the version and the replica count itself.

Example:
    >>> run = RunbookRun(ctx, "high_load", alert="AgentHighLoad").run()   # doctest: +SKIP
    >>> [(o.label, o.ok, round(o.seconds, 1)) for o in run.operations]
    [('scale 5', True, 4.4), ('rate_limit on 5/s burst 10', True, 1.2), ('notify', True, 0.0)]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from agentverify import _http, agent_ops
from agentverify.backup import open_backup, restore_into
from agentverify.config import (
    NotifyOperation,
    RateLimitOperation,
    RestartOperation,
    RestoreBackupOperation,
    RunbookOperation,
    ScaleOperation,
    SwitchLLMOperation,
)
from agentverify.drills.corrupt import CORRUPTION_KEY, last_verified_backup
from agentverify.drills.receiver import ReceiverClient
from agentverify.errors import AgentVerifyError, RunbookError, ScenarioError, StackError
from agentverify.monitoring.render import is_local_url
from agentverify.scenarios.smoke import unhealthy

if TYPE_CHECKING:
    from agentverify.scenarios.runner import ScenarioContext

__all__ = ["OPERATIONS", "OperationResult", "RunbookRun", "receiver_of"]

#: the scenario's state: what is put back after it (one entry per setting changed)
RESTORES_KEY = "runbook_restores"
STOPPED_KEY = "agents_stopped"


def receiver_of(ctx: ScenarioContext) -> ReceiverClient:
    """The stack's receiver (one client per scenario, closed with it)."""
    client = ctx.state.get("receiver_client")
    if client is None:
        try:
            url = ctx.stack.endpoints["receiver"]
        except KeyError:
            raise ScenarioError("this stack has no receiver service (the webhook receiver "
                                "alerts and notifications go to)") from None
        client = ctx.state["receiver_client"] = ReceiverClient(url)
        ctx.defer("close the receiver client", client.close)
    return client


def _put_back_once(ctx: ScenarioContext, key: str, description: str,
                   func: Callable[[], None]) -> bool:
    """Defer ``func`` unless something of ``key`` is already deferred (the first value
    seen is the one to go back to)."""
    restores: set[str] = ctx.state.setdefault(RESTORES_KEY, set())
    if key in restores:
        return False
    restores.add(key)
    ctx.defer(description, func)
    return True


@dataclass
class OperationResult:
    """One operation as it ran."""

    index: int
    name: str
    label: str
    started: float  # unix
    seconds: float = 0.0
    ok: bool = False
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ operations


def _scale(run: RunbookRun, p: ScaleOperation) -> dict[str, Any]:
    stack = run.ctx.stack
    want = run.ctx.config.stack.replicas if p.replicas == "baseline" else int(p.replicas)
    seconds = stack.scale(want)
    bad = unhealthy(stack.replicas, run.ctx.contract.health_path)
    if len(stack.replicas) != want or bad:
        raise ScenarioError(f"{len(stack.replicas) - len(bad)} of {want} replicas healthy "
                            f"after scaling: {'; '.join(bad)[:300]}")
    return {"replicas": want, "scale_seconds": round(seconds, 3)}


def _rate_limit(run: RunbookRun, p: RateLimitOperation) -> dict[str, Any]:
    ctx = run.ctx
    rps = p.requests_per_second if p.requests_per_second is not None else \
        ctx.config.rate_limit.requests_per_second
    burst = p.burst if p.burst is not None else ctx.config.rate_limit.burst
    done = agent_ops.rate_limit(ctx.stack, enabled=p.enabled, requests_per_second=rps,
                                burst=burst)
    previous = done.previous
    _put_back_once(ctx, "rate_limit", "put the rate limit back",
                   lambda: agent_ops.rate_limit(ctx.stack, **previous))
    return {"enabled": p.enabled, "requests_per_second": rps, "burst": burst,
            "previous": previous, "method": done.method}


def _switch_llm(run: RunbookRun, p: SwitchLLMOperation) -> dict[str, Any]:
    ctx = run.ctx
    done = agent_ops.switch_llm(ctx.stack, p.use)
    previous = done.previous.get("use", "primary")
    _put_back_once(ctx, "llm", f"switch the LLM API back to {previous}",
                   lambda: _switch_back(ctx, previous))
    model = ctx.config.model.backup.model_name if p.use == "backup" else \
        ctx.config.model.model_name
    return {"use": p.use, "model": model, "previous": previous, "method": done.method}


def _switch_back(ctx: ScenarioContext, use: str) -> None:
    if ctx.stack.replicas:  # agents stopped for good: the setting in Redis is moot
        agent_ops.switch_llm(ctx.stack, use)


def _clear_cache(run: RunbookRun, p: Any) -> dict[str, Any]:
    done = agent_ops.clear_cache(run.ctx.stack)
    return {"deleted": done.deleted, "method": done.method}


def _restart(run: RunbookRun, p: RestartOperation) -> dict[str, Any]:
    ctx = run.ctx
    stopped = ctx.state.get(STOPPED_KEY)
    if not ctx.stack.replicas and stopped:  # after stop_agents: start them again
        count, version = stopped
        seconds = ctx.stack.scale(count, version=version)
        ctx.state.pop(STOPPED_KEY, None)
        run.agents_up_at = time.time()
        return {"started": count, "version": version, "restart_seconds": round(seconds, 3)}
    rollout = ctx.stack.restart_agents(health_timeout=p.health_timeout_s)
    if rollout.failure:
        raise ScenarioError(f"rolling restart stopped: {rollout.failure}")
    return {"restarted": len(rollout.steps), "restart_seconds": round(rollout.seconds, 3)}


def _stop_agents(run: RunbookRun, p: Any) -> dict[str, Any]:
    ctx = run.ctx
    version = ctx.stack.current_version
    stopped = ctx.stack.stop_agents()
    run.agents_down_at = time.time()
    ctx.state[STOPPED_KEY] = (len(stopped), version)

    def start_again() -> None:  # the runbook never restarted them: the next scenario needs them
        if not ctx.stack.replicas and ctx.state.pop(STOPPED_KEY, None):
            ctx.stack.scale(len(stopped), version=version)

    ctx.defer("start the stopped agents again", start_again)
    return {"stopped": len(stopped), "version": version}


def _restore_backup(run: RunbookRun, p: RestoreBackupOperation) -> dict[str, Any]:
    ctx = run.ctx
    path = last_verified_backup(ctx)
    if path is None:
        raise ScenarioError("no verified backup to restore: put a 'backup' step (or a "
                            "corruption) before the runbook")
    with open_backup(path) as opened:  # verified again: refused before anything is touched
        seconds = restore_into(ctx.stack, opened, parts=list(p.parts), say=ctx.say)
    corruption = ctx.state.get(CORRUPTION_KEY)
    if corruption is not None:
        corruption.restored(p.parts)
    return {"archive": path.name, "parts": list(p.parts), "restore_seconds": round(seconds, 3)}


def _notify(run: RunbookRun, p: NotifyOperation) -> dict[str, Any]:
    text = p.text.format(**run.fields())
    record = run.notify(text)
    return {"text": text, "seq": record}


OPERATIONS: dict[str, Callable[[RunbookRun, Any], dict[str, Any]]] = {
    "scale": _scale,
    "rate_limit": _rate_limit,
    "switch_llm": _switch_llm,
    "clear_cache": _clear_cache,
    "restart": _restart,
    "stop_agents": _stop_agents,
    "restore_backup": _restore_backup,
    "notify": _notify,
}


# ------------------------------------------------------------------------------ the run


class RunbookRun:
    """One execution of a runbook of the config.

    Args:
        ctx: the scenario (stack, config, deferred clean-ups, timeline).
        name: a runbook of ``runbooks:``.
        alert: the alert that triggered it (for notification texts).
        operations: run these instead of the config's (e.g. a drill's ``recover``).
    """

    def __init__(self, ctx: ScenarioContext, name: str, *, alert: str | None = None,
                 operations: list[RunbookOperation] | None = None) -> None:
        if operations is None:
            if name not in ctx.config.runbooks:
                raise ScenarioError(f"no runbook {name!r} in the config; runbooks: "
                                    f"{', '.join(sorted(ctx.config.runbooks))}")
            operations = list(ctx.config.runbooks[name])
        self.ctx = ctx
        self.name = name
        self.alert = alert
        self.plan = operations
        self.operations: list[OperationResult] = []
        self.started: float | None = None
        self.ended: float | None = None
        self.notified: list[tuple[float, str]] = []  # (unix time, text) the team got
        self.agents_down_at: float | None = None
        self.agents_up_at: float | None = None

    @property
    def ok(self) -> bool:
        return len(self.operations) == len(self.plan) and all(o.ok for o in self.operations)

    @property
    def steps_ok(self) -> int:
        return sum(1 for o in self.operations if o.ok)

    @property
    def downtime_s(self) -> float | None:
        if self.agents_down_at is None:
            return None
        end = self.agents_up_at if self.agents_up_at is not None else time.time()
        return round(end - self.agents_down_at, 3)

    def fields(self, **extra: str) -> dict[str, str]:
        return {"runbook": self.name, "alert": self.alert or "-", "env": self.ctx.env,
                "operation": "-", "error": "-", **extra}

    def notify(self, text: str) -> int:
        """Tell the team: the receiver, and a loopback ``monitoring.alert_webhook``."""
        record = receiver_of(self.ctx).notify(text)
        self.notified.append((time.time(), text))
        webhook = self.ctx.config.monitoring.alert_webhook
        if is_local_url(webhook):
            try:
                _http.client().post(webhook, json={"text": text}, timeout=5.0)
            except httpx.HTTPError as exc:  # the receiver has it: the rehearsal goes on
                self.ctx.say(f"  notify: {webhook}: {type(exc).__name__}: {exc}")
        self.ctx.event("notify", f"team notified: {text[:60]}", source="runbook",
                       runbook=self.name, text=text)
        return record.seq

    def run(self) -> RunbookRun:
        """Run every operation in order; stop at the first failure (notified, raised).

        Raises:
            RunbookError: an operation failed: ``runbook NAME: operation N (OP) failed: ...``.
        """
        self.started = time.time()
        self.ctx.say(f"  runbook {self.name}: {', '.join(o.describe() for o in self.plan) or 'no operation'}")
        try:
            for index, op in enumerate(self.plan, 1):
                result = OperationResult(index, op.name, op.describe(), time.time())
                self.operations.append(result)
                t0 = time.monotonic()
                try:
                    result.detail = OPERATIONS[op.name](self, op.params) or {}
                    result.ok = True
                except (AgentVerifyError, httpx.HTTPError, OSError) as exc:
                    result.error = str(exc).splitlines()[0][:500]
                finally:
                    result.seconds = time.monotonic() - t0
                    self.ctx.event("runbook", f"{self.name}: {result.label}", t=result.started,
                                   end=result.started + result.seconds, runbook=self.name,
                                   operation=index, ok=result.ok, error=result.error)
                self.ctx.say(f"    {index}. {result.label}: "
                             + (f"ok in {result.seconds:.2f}s" if result.ok else
                                f"FAILED after {result.seconds:.2f}s: {result.error}"))
                if not result.ok:
                    self._failed(index, op, result.error or "failed")
        finally:
            self.ended = time.time()
            self.ctx.event("runbook", f"runbook {self.name}", t=self.started, end=self.ended,
                           runbook=self.name, ok=self.ok, steps_ok=self.steps_ok,
                           steps=len(self.plan))
        return self

    def _failed(self, index: int, op: RunbookOperation, error: str) -> None:
        message = (f"runbook {self.name}: operation {index} ({op.describe()}) failed: {error}")
        try:  # the seed's notify_error: the team hears about the failure itself
            self.notify(message)
        except StackError as exc:
            message += f" (and the notification failed too: {exc})"
        raise RunbookError(message)
