"""The registry of step types a scenario file can use.

A step type is a function ``(ctx, params) -> facts`` registered with :func:`step`,
with a pydantic model for its parameters (unknown keys are errors) and the names of the
facts it measures (so a gate on a fact nothing measures is caught at collection).

Where step types come from, in this order:

1. agentverify's own step modules (:data:`BUILTIN_MODULES`);
2. the ``agentverify.steps`` entry point group of installed packages — each entry point
   names a module (importing it runs its ``@step`` decorators) or a function
   ``register(registry)``;
3. the pytest hook ``pytest_agentverify_add_steps(registry)`` (a conftest.py or plugin
   calls ``registry.add(...)`` or imports a module of ``@step`` functions).

Example:
    >>> class Params(StepParams):
    ...     message: str
    >>> @step("echo", params=Params, facts=("echo_len",))
    ... def echo(ctx, params):
    ...     return {"echo_len": len(params.message)}
    >>> "echo" in default_registry()
    True
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agentverify.errors import ConfigError

__all__ = ["BUILTIN_MODULES", "ENTRY_POINT_GROUP", "StepParams", "StepRegistry", "StepType",
           "default_registry", "step"]

ENTRY_POINT_GROUP = "agentverify.steps"

BUILTIN_MODULES = (
    "agentverify.scenarios.smoke",
    "agentverify.scenarios.deploy",
    "agentverify.scenarios.rolling_update",
    "agentverify.scenarios.backup_restore",
    "agentverify.load.steps",
    "agentverify.scenarios.cost_controls",
    "agentverify.scenarios.operations",
    "agentverify.faults.steps",
    "agentverify.drills.steps",
)


class StepParams(BaseModel):
    """Base of every step's parameters: unknown keys are errors.

    ``label`` (every step has it) suffixes the step's facts, so one scenario can measure
    the same thing twice: ``- targets: {label: scaled_up}`` gives ``targets_down_scaled_up``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str | None = Field(None, pattern=r"^[a-z0-9_]+$")

    def fact_names(self, facts: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f"{f}_{self.label}" for f in facts) if self.label else facts


StepFunc = Callable[[Any, Any], dict[str, Any]]


@dataclass(frozen=True)
class StepType:
    """One step type: its name, function, parameter model and the facts it measures."""

    name: str
    func: StepFunc
    params: type[StepParams]
    facts: tuple[str, ...]
    timeline: str | None = None  # the kind of timeline event it is ("rollout"); None: "step"


class StepRegistry:
    """Step types by name."""

    def __init__(self) -> None:
        self._types: dict[str, StepType] = {}
        self._lock = threading.Lock()

    def add(self, step_type: StepType) -> None:
        """Register ``step_type``; a second step of the same name replaces the first
        (a project may override a built-in step on purpose)."""
        with self._lock:
            self._types[step_type.name] = step_type

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __getitem__(self, name: str) -> StepType:
        return self._types[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._types))

    def names(self) -> list[str]:
        return sorted(self._types)


_DEFAULT = StepRegistry()
_loaded = False
_load_lock = threading.Lock()


def step(name: str, *, params: type[StepParams] = StepParams,
         facts: tuple[str, ...] = (), timeline: str | None = None,
         ) -> Callable[[StepFunc], StepFunc]:
    """Register a step type under ``name`` in the default registry.

    ``timeline`` is the kind of event its run is on the report's timeline (``"rollout"``
    for steps that change what serves traffic); by default a plain ``"step"``.
    """

    def register(func: StepFunc) -> StepFunc:
        _DEFAULT.add(StepType(name, func, params, tuple(facts), timeline))
        return func

    return register


def _load_entry_points(registry: StepRegistry) -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP}"
        try:
            loaded = ep.load()
        except Exception as exc:  # an installed package's import error, shown in one line
            raise ConfigError(f"{where} failed to load: {type(exc).__name__}: {exc}") from None
        if callable(loaded) and not isinstance(loaded, type):
            loaded(registry)


def default_registry() -> StepRegistry:
    """The registry with agentverify's own steps and every installed entry point's."""
    global _loaded
    with _load_lock:
        if not _loaded:
            for module in BUILTIN_MODULES:
                importlib.import_module(module)
            _load_entry_points(_DEFAULT)
            _loaded = True
    return _DEFAULT
