"""agentverify: prove an AI-agent service is ready for production before it gets there.

It brings up the whole stack (agent replicas behind nginx, Redis, Milvus, Prometheus +
Alertmanager, an LLM endpoint) on real processes or real containers, rehearses what
operations will do to it with real traffic, and ends every rehearsal in a gate CI can
fail on, with the measured figure beside its threshold.

    pytest --agentverify-env staging          # the CI gate (pytest plugin)
    agentverify up --env dev                  # a live stack to poke at
    agentverify run --env staging             # the bundled gate, with reports/

Example:
    >>> from agentverify import Stack, load_config
    >>> with Stack.from_config(load_config(env="dev"), backend="local") as stack:  # doctest: +SKIP
    ...     stack.rolling_update("v2")

Everything public is re-exported here; modules below are implementation.
"""

from __future__ import annotations

import importlib
from typing import Any

# Exports are resolved on first use (PEP 562): the services agentverify runs (the
# reference agent, the LLM stub, the load child) import their own subpackage without
# paying for the whole tool (pydantic models, httpx, the stack) at every start.
_EXPORTS = {
    "agentverify.agent_ops": ("AgentOpResult",),
    "agentverify.config": ("Config", "load_config"),
    "agentverify.contract": ("AgentContract", "AgentReply"),
    "agentverify.errors": (
        "AgentOpError", "AgentVerifyError", "BackendUnavailable", "BackupRestoreError",
        "ConfigError", "ContractError", "DeployError", "FaultInjectionError", "LoadTestError",
        "RollbackError", "RunbookError", "ScenarioError", "ScenarioSchemaError", "ServiceNotReady",
        "ServiceStartError", "StackError", "UsageError"),
    "agentverify.gates": ("Gate", "GateResult", "Inconclusive"),
    "agentverify.report.journal": ("RunJournal", "ScenarioResult", "StepResult", "TimelineEvent",
                                   "TimeSeries"),
    "agentverify.scenarios.registry": ("StepParams", "step"),
    "agentverify.session": ("AgentVerifySession",),
    "agentverify.stack.backend": ("Backend", "CommandResult", "Handle", "get_backend"),
    "agentverify.stack.spec": ("Port", "ServiceSpec", "StackSpec"),
    "agentverify.stack.stack": ("Replica", "Stack"),
    "agentverify.stack.wait": (
        "CompositeWaitStrategy", "HttpWaitStrategy", "LogWaitStrategy", "PortWaitStrategy",
        "ServiceTarget", "WaitStrategy"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'agentverify' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"

__all__ = [
    "AgentContract",
    "AgentOpError",
    "AgentOpResult",
    "AgentReply",
    "AgentVerifyError",
    "AgentVerifySession",
    "Backend",
    "BackendUnavailable",
    "BackupRestoreError",
    "CommandResult",
    "CompositeWaitStrategy",
    "Config",
    "ConfigError",
    "ContractError",
    "DeployError",
    "FaultInjectionError",
    "Gate",
    "GateResult",
    "Handle",
    "HttpWaitStrategy",
    "Inconclusive",
    "LoadTestError",
    "LogWaitStrategy",
    "Port",
    "PortWaitStrategy",
    "Replica",
    "RollbackError",
    "RunbookError",
    "RunJournal",
    "ScenarioError",
    "ScenarioResult",
    "ScenarioSchemaError",
    "ServiceNotReady",
    "ServiceSpec",
    "ServiceStartError",
    "ServiceTarget",
    "Stack",
    "StackError",
    "StackSpec",
    "StepParams",
    "StepResult",
    "TimeSeries",
    "TimelineEvent",
    "UsageError",
    "WaitStrategy",
    "__version__",
    "get_backend",
    "load_config",
    "step",
]
