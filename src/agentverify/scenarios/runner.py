"""Run a scenario on a stack: steps in order, facts collected, gates evaluated.

A step that raises an :class:`~agentverify.errors.AgentVerifyError` ends the scenario
with that error (the facts measured so far are kept and reported). Whatever happens,
the cleanups steps registered run afterwards, and a shared stack is brought back to its
baseline (the configured version and replica count), so the next scenario starts from
a known state even after an interrupted rollout.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx

from agentverify import _http
from agentverify.errors import AgentVerifyError, StackError
from agentverify.report.journal import RunJournal, ScenarioResult, StepResult, TimelineEvent, TimeSeries
from agentverify.scenarios.model import ScenarioSpec
from agentverify.stack.spec import ROLE_AGENT, ROLE_LB

if TYPE_CHECKING:
    from pathlib import Path

    from agentverify.config import Config
    from agentverify.contract import AgentContract, AgentReply
    from agentverify.monitoring.prometheus import PrometheusClient
    from agentverify.stack.stack import Stack

__all__ = ["ScenarioContext", "run_scenario", "restore_baseline"]


class ScenarioContext:
    """What a step gets: the stack, the config, shared state and cleanups.

    Args:
        stack: the running :class:`~agentverify.stack.stack.Stack`.
        config: the resolved :class:`~agentverify.config.Config`.
        env: environment name.
        report_dir: where reports (and backups, plots) go.
        say: prints a progress line.
        new_stack: ``(**overrides) -> context manager`` yielding a fresh, running stack
            of its own (the session's ``fresh_stack``), for steps that need a second one.
        journal: the session's :class:`~agentverify.report.journal.RunJournal`, where
            :meth:`event` records (a journal of its own when not given).
    """

    def __init__(self, stack: Stack, config: Config, *, env: str, report_dir: Path,
                 say: Callable[[str], None] = print, backend: str = "",
                 new_stack: Callable[..., AbstractContextManager[Stack]] | None = None,
                 journal: RunJournal | None = None) -> None:
        self._new_stack = new_stack
        self.journal = journal if journal is not None else RunJournal(env=env, backend=backend)
        self.scenario: str | None = None  # set by run_scenario
        self.stack = stack
        self.config = config
        self.env = env
        self.report_dir = report_dir
        self.say = say
        self.backend = backend
        self.facts: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        #: the step running now (its waits are accounted on it)
        self.step: StepResult | None = None
        self.series: dict[str, TimeSeries | list[list[float]]] = {}
        self._cleanups: list[tuple[str, Callable[[], None]]] = []

    @cached_property
    def http(self) -> httpx.Client:
        """A client on the load balancer."""
        return _http.new_client(base_url=self.stack.lb_url, timeout=30.0)

    @cached_property
    def contract(self) -> AgentContract:
        """How to talk to the agent under test (``stack.agent.contract``)."""
        from agentverify.contract import AgentContract

        return AgentContract.from_config(self.config)

    def ask(self, message: str, **options: Any) -> AgentReply:
        """Ask ``message`` through the load balancer and read the reply through the
        contract (``options``: ``session``, ``client_id``, ``headers``, ``strict``).

        Raises:
            ContractError: a successful reply does not match the contract.
            httpx.HTTPError: no answer at all.
        """
        return self.contract.ask(self.http, message, **options)

    @cached_property
    def prometheus(self) -> PrometheusClient:
        from agentverify.monitoring.prometheus import PrometheusClient

        return PrometheusClient(self.stack.endpoints["prometheus"])

    def llm_url(self) -> str:
        return self.stack.endpoints["llm"]

    def ledger(self) -> dict[str, Any]:
        """The LLM stub's ledger (requests and tokens it has served)."""
        try:
            resp = _http.client().get(self.llm_url() + "/ledger", timeout=5.0)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise StackError(f"LLM ledger at {self.llm_url()}/ledger: {exc}") from exc
        return resp.json()

    def new_stack(self, *, only: tuple[str, ...] | None = None, jobs: bool = True,
                  prepare: Callable[[Stack], None] | None = None,
                  **overrides: Any) -> AbstractContextManager[Stack]:
        """A fresh stack of its own (config ``overrides`` as dotted keys; ``only``: just
        those services and their dependencies; ``jobs=False``: without the one-off jobs;
        ``prepare(stack)`` runs before it is brought up, see
        :meth:`~agentverify.stack.stack.Stack.prepare`), torn down when the ``with``
        block ends: ``with ctx.new_stack(**{"stack.replicas": 1}) as s:``.
        """
        if self._new_stack is None:
            raise StackError("this scenario context cannot start a fresh stack "
                             "(it was made without a session)")
        return self._new_stack(only=only, jobs=jobs, prepare=prepare, **overrides)

    def event(self, kind: str, label: str, *, t: float | None = None, end: float | None = None,
              **detail: Any) -> TimelineEvent:
        """Put an event of this scenario on the run's timeline (drawn on the report's plots).

        Args:
            kind: ``rollout``, ``fault``, ``alert``, ``notify``, ``drill``, ``runbook``,
                ``kill``, ... (see :data:`~agentverify.report.journal.EVENT_KINDS`).
            label: What the plot shows, e.g. ``"redis +200 ms"``.
            t: Unix seconds it began (default: now).
            end: Unix seconds it ended; None for an instant.
            detail: Anything else worth keeping (JSON-serialisable values).

        Example:
            >>> t0 = time.time(); apply_fault()                           # doctest: +SKIP
            >>> ctx.event("fault", "redis +200 ms", t=t0, end=time.time(),  # doctest: +SKIP
            ...           target="redis")
        """
        return self.journal.event(kind, label, t=t, end=end, scenario=self.scenario, **detail)

    def wait(self, seconds: float, reason: str) -> None:
        """Sleep ``seconds`` on purpose (a bake, a fault held) and account for it: the
        report splits a gate's time into these waits and agentverify's own overhead."""
        if seconds > 0:
            time.sleep(seconds)
            self.waited(seconds, reason)

    def waited(self, seconds: float, reason: str) -> None:
        """Account for ``seconds`` the current step spent waiting on purpose in some
        other way (a load's duration, a deliberate timeout)."""
        if self.step is not None and seconds > 0:
            self.step.waited(reason, seconds)

    @contextlib.contextmanager
    def waiting(self, reason: str) -> Iterator[None]:
        """Account for the time the block takes (raising or not) as a wait on purpose:
        a wait on what the configuration times, such as an alert's path or a bake.

        Example:
            >>> with ctx.waiting("alert"):                                  # doctest: +SKIP
            ...     watch.wait(lambda w: w.firing_at, timeout)
        """
        start = time.monotonic()
        try:
            yield
        finally:
            self.waited(time.monotonic() - start, reason)

    def defer(self, description: str, func: Callable[[], None]) -> None:
        """Run ``func`` after the scenario, even if it fails or is interrupted."""
        self._cleanups.append((description, func))

    def run_cleanups(self) -> list[str]:
        errors = []
        while self._cleanups:
            description, func = self._cleanups.pop()
            try:
                func()
            except Exception as exc:  # a failing cleanup must not hide the others
                errors.append(f"cleanup '{description}' failed: {exc}")
        return errors

    def close(self) -> None:
        if "http" in self.__dict__:
            self.http.close()
        if "prometheus" in self.__dict__:
            close = getattr(self.prometheus, "close", None)
            if close:
                close()


def restore_baseline(stack: Stack, config: Config, say: Callable[[str], None] = print) -> None:
    """Bring a shared stack back to the configured version, agent configuration and
    replica count.

    Nothing sends traffic between scenarios (a scenario's clean-ups stop its probes and
    loads before this runs), so every replica is replaced at once (blue/green: new
    instances started side by side, then one switch) rather than one at a time: one agent
    start on the clock instead of one per replica; and the replaced ones stop without the
    deregistration delay; they stop in the background while the next scenario begins
    (they serve nothing, and are no target of Prometheus), and the next restore, or the
    teardown, waits for them first.
    """
    if not stack.is_up:
        return
    stack.settle()  # the replicas the last restore replaced
    want_version = config.stack.version
    agent_config = getattr(stack, "agent_config", None)  # None: not made from a config
    if agent_config is not None and agent_config != config:
        say(f"restoring baseline: every replica back on the configured agent config at "
            f"{want_version} at once")
        stack.reconfigure_agents(config, version=want_version, at_once=True, drain=False,
                                 background=True)
    if any(v != want_version for v in stack.versions):
        say(f"restoring baseline: every replica back to {want_version} at once")
        stack.promote(stack.start_standby(want_version), drain=False, background=True)
    if len(stack.replicas) != config.stack.replicas:
        say(f"restoring baseline: scaling back to {config.stack.replicas} replicas")
        stack.scale(config.stack.replicas, version=want_version, drain=False)


def run_scenario(spec: ScenarioSpec, ctx: ScenarioContext) -> ScenarioResult:
    """Run every step, then evaluate the gates of ``ctx.env`` on the measured facts."""
    result = ScenarioResult(name=spec.name, file=str(spec.file), started=time.time())
    ctx.scenario = spec.name
    started = time.monotonic()
    try:
        for step in spec.steps:
            ctx.say(f"[{spec.name}] step {step.index}: {step.type}")
            t0 = time.monotonic()
            record = StepResult(index=step.index, type=step.type, seconds=0.0,
                                started=time.time())
            result.steps.append(record)
            ctx.step = record
            stack_waits = dict(getattr(ctx.stack, "waits", {}))
            try:
                facts = step.step_type.func(ctx, step.params) or {}
            except AgentVerifyError as exc:
                record.error = str(exc)
                result.error = f"step {step.index} ({step.type}): {exc}"
                break
            finally:
                record.seconds = time.monotonic() - t0
                for reason, total in getattr(ctx.stack, "waits", {}).items():
                    if total > stack_waits.get(reason, 0.0):
                        record.waited(reason, total - stack_waits.get(reason, 0.0))
                ctx.step = None
                _step_event(ctx, step, record)
            if step.params.label:
                facts = {f"{k}_{step.params.label}": v for k, v in facts.items()}
            record.facts = dict(facts)
            ctx.facts.update(facts)
    finally:
        cleanup_errors = ctx.run_cleanups()
        if cleanup_errors and result.error is None:
            result.error = "; ".join(cleanup_errors)
        result.facts = dict(ctx.facts)
        result.series = {k: TimeSeries.of(v) for k, v in ctx.series.items()}
        result.seconds = time.monotonic() - started
        result.ended = time.time()
    result.gates = [g.evaluate(result.facts) for g in spec.gates(ctx.env)]
    if not result.passed:
        result.logs = failure_logs(ctx.stack, result.error)
    return result


def _step_event(ctx: ScenarioContext, step: Any, record: StepResult) -> None:
    """A step on the timeline; steps that change what serves (deploy, rollouts, scale)
    are ``rollout`` events, labelled with the version or replica count they aim at."""
    kind = step.step_type.timeline or "step"
    target = getattr(step.params, "version", None) or getattr(step.params, "replicas", None)
    label = f"{step.type} {target}" if kind != "step" and target is not None else step.type
    ctx.event(kind, label, t=record.started, end=(record.started or 0.0) + record.seconds,
              step=step.index, type=step.type, error=record.error)


#: log lines kept per instance of a failed scenario
FAILURE_LOG_LINES = 20


def _names(text: str, instance: str) -> bool:
    """``instance`` is named in ``text`` as a word ("agent-1" is not in "agent-10")."""
    return re.search(rf"(?<![\w-]){re.escape(instance)}(?![\w-])", text) is not None


def failure_logs(stack: Any, error: str | None, lines: int = FAILURE_LOG_LINES) -> dict[str, str]:
    """The last log lines of the service a failure points at, redacted.

    A stack error usually names the instance (``agent-1 FAILED: ...``); the instances
    named in ``error`` are taken when there are any, else the load balancer and the
    agent replicas (where a failed gate's requests went). Never raises: a log that
    cannot be read is left out (it must not hide the scenario's own failure).

    Example:
        >>> failure_logs(stack, "step 2 (rolling_update): agent-1 did not become healthy")
        ...                                                               # doctest: +SKIP
        {'agent-1': '... INFO ...'}
    """
    try:
        handles = list(stack.instances())
    except Exception:  # a stack torn down mid-way: there is nothing left to read
        return {}
    text = error or ""
    named = [h for h in handles if _names(text, h.instance)]
    chosen = named or [h for h in handles if h.spec.role in (ROLE_LB, ROLE_AGENT)]
    redact = getattr(stack, "redactor", None) or (lambda s: s)
    out: dict[str, str] = {}
    for handle in chosen:
        try:
            out[handle.name] = redact(handle.logs(lines))
        except Exception:  # one unreadable log must not lose the others
            continue
    return out
