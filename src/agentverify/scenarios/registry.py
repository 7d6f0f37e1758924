"""The registry of step types a scenario file can use.

A step type is a function ``(ctx, params) -> facts`` registered with :func:`step`,
with a pydantic model for its parameters (unknown keys are errors) and the names of the
facts it measures (so a gate on a fact nothing measures is caught at collection).

Example:
    >>> class Params(StepParams):
    ...     message: str
    >>> @step("echo", params=Params, facts=("echo_len",))
    ... def echo(ctx, params):
    ...     return {"echo_len": len(params.message)}
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["STEPS", "StepParams", "StepType", "step", "load_builtin_steps"]


class StepParams(BaseModel):
    """Base of every step's parameters: unknown keys are errors.

    ``label`` (every step has it) suffixes the step's facts, so one scenario can measure
    the same thing twice: ``- targets: {label: scaled_up}`` gives ``targets_down_scaled_up``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str | None = Field(None, pattern=r"^[a-z0-9_]+$")

    def fact_names(self, facts: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f"{f}_{self.label}" for f in facts) if self.label else facts


@dataclass(frozen=True)
class StepType:
    name: str
    func: Callable[[Any, Any], dict[str, Any]]
    params: type[StepParams]
    facts: tuple[str, ...]
    doc: str
    timeline: str | None = None  # the kind of timeline event it is ("rollout"); None: "step"


STEPS: dict[str, StepType] = {}

BUILTIN_MODULES = (
    "agentverify.scenarios.smoke",
    "agentverify.scenarios.deploy",
    "agentverify.scenarios.rolling_update",
    "agentverify.scenarios.backup_restore",
    "agentverify.load.steps",
)


def step(name: str, *, params: type[StepParams] = StepParams,
         facts: tuple[str, ...] = (), timeline: str | None = None,
         ) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Register a step type under ``name``.

    ``timeline`` is the kind of event its run is on the report's timeline (``"rollout"``
    for steps that change what serves traffic); by default a plain ``"step"``.
    """

    def register(func: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        STEPS[name] = StepType(name, func, params, tuple(facts),
                               (func.__doc__ or "").strip().split("\n")[0], timeline)
        return func

    return register


_loaded = False


def load_builtin_steps() -> None:
    """Import the built-in step modules once."""
    global _loaded
    if _loaded:
        return
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    _loaded = True
