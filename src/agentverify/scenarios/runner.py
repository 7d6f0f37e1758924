"""Run a scenario on a stack: steps in order, facts collected, gates evaluated.

A step that raises an :class:`~agentverify.errors.AgentVerifyError` ends the scenario
with that error (the facts measured so far are kept and reported). Whatever happens,
the cleanups steps registered run afterwards, and a shared stack is brought back to its
baseline (the configured version and replica count), so the next scenario starts from
a known state even after an interrupted rollout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx

from agentverify import _http
from agentverify.errors import AgentVerifyError, StackError
from agentverify.report.journal import ScenarioResult, StepResult
from agentverify.scenarios.model import ScenarioSpec

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
    """

    def __init__(self, stack: Stack, config: Config, *, env: str, report_dir: Path,
                 say: Callable[[str], None] = print, backend: str = "",
                 new_stack: Callable[..., AbstractContextManager[Stack]] | None = None) -> None:
        self._new_stack = new_stack
        self.stack = stack
        self.config = config
        self.env = env
        self.report_dir = report_dir
        self.say = say
        self.backend = backend
        self.facts: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        self.series: dict[str, list[list[float]]] = {}
        self._cleanups: list[tuple[str, Callable[[], None]]] = []

    @cached_property
    def http(self) -> httpx.Client:
        """A client on the load balancer."""
        return httpx.Client(base_url=self.stack.lb_url, timeout=30.0)

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

    def new_stack(self, **overrides: Any) -> AbstractContextManager[Stack]:
        """A fresh stack of its own (config ``overrides`` as dotted keys), torn down
        when the ``with`` block ends: ``with ctx.new_stack(**{"stack.replicas": 1}) as s:``.
        """
        if self._new_stack is None:
            raise StackError("this scenario context cannot start a fresh stack "
                             "(it was made without a session)")
        return self._new_stack(**overrides)

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
    replica count."""
    if not stack.is_up:
        return
    want_version = config.stack.version
    agent_config = getattr(stack, "agent_config", None)  # None: not made from a config
    if agent_config is not None and agent_config != config:
        say(f"restoring baseline: replicas back on the configured agent config at {want_version}")
        rollout = stack.reconfigure_agents(config, version=want_version)
        if rollout.failure:
            raise StackError(f"restoring the agent configuration failed: {rollout.failure}")
    if any(v != want_version for v in stack.versions):
        say(f"restoring baseline: replicas back to {want_version}")
        stack.rollback(want_version)
    if len(stack.replicas) != config.stack.replicas:
        say(f"restoring baseline: scaling back to {config.stack.replicas} replicas")
        stack.scale(config.stack.replicas, version=want_version)


def run_scenario(spec: ScenarioSpec, ctx: ScenarioContext) -> ScenarioResult:
    """Run every step, then evaluate the gates of ``ctx.env`` on the measured facts."""
    result = ScenarioResult(name=spec.name, file=str(spec.file))
    started = time.monotonic()
    try:
        for step in spec.steps:
            ctx.say(f"[{spec.name}] step {step.index}: {step.type}")
            t0 = time.monotonic()
            record = StepResult(index=step.index, type=step.type, seconds=0.0)
            result.steps.append(record)
            try:
                facts = step.step_type.func(ctx, step.params) or {}
            except AgentVerifyError as exc:
                record.error = str(exc)
                result.error = f"step {step.index} ({step.type}): {exc}"
                break
            finally:
                record.seconds = time.monotonic() - t0
            if step.params.label:
                facts = {f"{k}_{step.params.label}": v for k, v in facts.items()}
            record.facts = dict(facts)
            ctx.facts.update(facts)
    finally:
        cleanup_errors = ctx.run_cleanups()
        if cleanup_errors and result.error is None:
            result.error = "; ".join(cleanup_errors)
        result.facts = dict(ctx.facts)
        result.series = dict(ctx.series)
        result.seconds = time.monotonic() - started
    result.gates = [g.evaluate(result.facts) for g in spec.gates(ctx.env)]
    return result
