"""The one exception tree of agentverify.

Every error agentverify raises on purpose derives from :class:`AgentVerifyError`.
Usage errors (the user's input is wrong) are kept apart from operational failures
(something in the stack or a rehearsal went wrong), because the boundary treats them
differently: a usage error is one line and exit code 2, an operational failure is a
red gate or a failed test with the observed state.

    AgentVerifyError
    ├── UsageError                  bad input: exit code 2, one line, no traceback
    │   ├── ConfigError             agentverify.yaml / overlays / AGENTVERIFY_* / CLI
    │   └── ScenarioSchemaError     a scenarios/*.yaml file
    ├── StackError                  bringing the stack up, changing it, tearing it down
    │   ├── BackendUnavailable      e.g. no Docker engine, a binary not installed
    │   ├── ServiceStartError       a process / container did not start or exited
    │   └── ServiceNotReady         started, but its readiness check timed out
    ├── ScenarioError               a rehearsal could not be carried out
    │   ├── DeployError
    │   ├── RollbackError
    │   ├── BackupRestoreError
    │   ├── ContractError           the agent's reply does not match stack.agent.contract
    │   ├── AgentOpError            rate limit / cache clear / LLM switch not carried out
    │   └── RunbookError            an operation of a runbook failed (it was notified)
    ├── LoadTestError
    └── FaultInjectionError

Third-party errors (subprocess, httpx, docker) are translated in one place per
boundary with ``raise Mapped(msg) from exc`` so the cause stays in ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "AgentVerifyError",
    "UsageError",
    "ConfigError",
    "ScenarioSchemaError",
    "StackError",
    "BackendUnavailable",
    "ServiceStartError",
    "ServiceNotReady",
    "ScenarioError",
    "DeployError",
    "RollbackError",
    "BackupRestoreError",
    "ContractError",
    "AgentOpError",
    "RunbookError",
    "LoadTestError",
    "FaultInjectionError",
]


class AgentVerifyError(Exception):
    """Root of every error agentverify raises on purpose."""


class UsageError(AgentVerifyError):
    """The user's input is wrong. Shown as one line; the CLI exits with code 2."""


class ConfigError(UsageError):
    """A configuration value is missing, unknown or of the wrong type.

    The message always names the file (or source), the key path and what was expected,
    e.g. ``agentverify.yaml: stack.replicas: expected an integer >= 1, got 'three'``.
    """

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        parts = [p for p in (source, key) if p]
        super().__init__(": ".join([*parts, message]))


class ScenarioSchemaError(UsageError):
    """A scenario YAML file is malformed: names the file, the scenario/step and the problem."""


class StackError(AgentVerifyError):
    """The stack could not be brought up, changed or torn down."""


class BackendUnavailable(StackError):
    """A backend cannot run here (a binary or the Docker engine is missing)."""


class ServiceStartError(StackError):
    """A service's process or container failed to start or exited early."""


class ServiceNotReady(StackError):
    """A service started but did not become ready before its deadline."""


class ScenarioError(AgentVerifyError):
    """A rehearsal could not be carried out (distinct from a gate that failed)."""


class DeployError(ScenarioError):
    """A deploy step failed (validation, resources, rollout, health check, traffic switch)."""


class RollbackError(ScenarioError):
    """A rollback could not be completed."""


class BackupRestoreError(ScenarioError):
    """A backup could not be written, or an archive could not be verified or restored."""


class ContractError(ScenarioError):
    """The agent answered, but not as ``stack.agent.contract`` says it does: one line
    naming the contract key, what was wrong, the request and the reply (truncated)."""


class AgentOpError(ScenarioError):
    """An operation on the agent fleet (rate limit, cache clear, LLM switch) could not be
    carried out: the admin endpoint failed, a replica did not follow, or a rolling
    restart failed (the message names which)."""


class RunbookError(ScenarioError):
    """An operation of a runbook failed; the message names the runbook and the operation
    (and the team was notified of it, as the seed's ``notify_error``)."""


class LoadTestError(AgentVerifyError):
    """The load driver failed (not: the service was too slow, which is a gate)."""


class FaultInjectionError(AgentVerifyError):
    """A fault could not be injected or removed."""
