"""Scenario files: schema, parsing and validation.

A scenario file holds one scenario (its keys at the top level) or several (under
``scenarios:``)::

    scenarios:
      - name: rolling-update
        description: v1 -> v2 under steady traffic with no failed request
        environments: [dev, staging]      # optional; default: every environment
        stack: shared                      # shared (default) | fresh
        steps:
          - probe_start: {rps: 25}
          - rolling_update: {version: v2}
          - probe_stop: {}
        expect:
          failed_requests: "== 0"
          longest_gap_s: {default: "<= 2", production: "<= 1"}

Every problem is reported as ``FILE: scenario 'NAME': step N (TYPE): problem``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agentverify.errors import ScenarioSchemaError
from agentverify.gates import Gate, parse_gates
from agentverify.scenarios.registry import StepParams, StepRegistry, StepType, default_registry

__all__ = ["ScenarioSpec", "StepSpec", "load_scenario_file"]

_SCENARIO_KEYS = {"name", "description", "environments", "stack", "steps", "expect"}
_LINE = "__line__"


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping (for reportinfo and errors)."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping[_LINE] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _strip_lines(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_lines(v) for k, v in value.items() if k != _LINE}
    if isinstance(value, list):
        return [_strip_lines(v) for v in value]
    return value


@dataclass(frozen=True)
class StepSpec:
    """One validated step: its type, validated parameters and where it is written."""

    index: int
    type: str
    params: StepParams
    line: int
    step_type: StepType

    @property
    def facts(self) -> tuple[str, ...]:
        """The facts this step measures (with its label's suffix)."""
        return self.params.fact_names(self.step_type.facts)


@dataclass(frozen=True)
class ScenarioSpec:
    """One validated scenario."""

    name: str
    file: Path
    line: int
    steps: tuple[StepSpec, ...]
    expect: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    environments: tuple[str, ...] | None = None
    fresh_stack: bool = False

    def applies_to(self, env: str) -> bool:
        return self.environments is None or env in self.environments

    def gates(self, env: str) -> list[Gate]:
        return parse_gates(self.expect, env, where=f"scenario {self.name!r}: expect")


def _fail(path: Path, msg: str) -> ScenarioSchemaError:
    return ScenarioSchemaError(f"{path}: {msg}")


def _pydantic_problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "<params>"
    if err.get("type") == "extra_forbidden":
        return f"unknown key {loc!r}"
    if err.get("type") == "missing":
        return f"required key {loc!r} is missing"
    return f"{loc}: {err.get('msg', 'invalid').removeprefix('Value error, ')} " \
           f"(got {err.get('input')!r})"


def _parse_step(path: Path, scenario: str, index: int, raw: Any, line: int,
                registry: StepRegistry) -> StepSpec:
    where = f"scenario {scenario!r}: step {index}"
    if isinstance(raw, str):
        raw = {raw: {}}
    if not isinstance(raw, dict):
        raise _fail(path, f"{where}: expected a mapping like '- chat: {{message: hi}}', "
                          f"got {type(raw).__name__}")
    step_line = raw.get(_LINE, line)
    keys = [k for k in raw if k != _LINE]
    if len(keys) != 1:
        raise _fail(path, f"{where}: a step has exactly one key (its type), got {keys}")
    kind = str(keys[0])
    if kind not in registry:
        raise _fail(path, f"{where}: unknown step type {kind!r}; expected one of: "
                          f"{', '.join(registry.names())}")
    step_type = registry[kind]
    params = _strip_lines(raw[kind]) or {}
    if not isinstance(params, dict):
        raise _fail(path, f"{where} ({kind}): expected a mapping of parameters, got {params!r}")
    try:
        model = step_type.params.model_validate(params)
    except ValidationError as exc:
        allowed = ", ".join(step_type.params.model_fields) or "none"
        raise _fail(path, f"{where} ({kind}): {_pydantic_problem(exc)}; "
                          f"parameters: {allowed}") from None
    return StepSpec(index=index, type=kind, params=model, line=step_line, step_type=step_type)


def _parse_scenario(path: Path, raw: Any, position: int,
                    registry: StepRegistry) -> ScenarioSpec:
    if not isinstance(raw, dict):
        raise _fail(path, f"scenario {position}: expected a mapping, got {type(raw).__name__}")
    line = raw.get(_LINE, 1)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(path, f"scenario {position} (line {line}): required key 'name' is missing")
    unknown = sorted(k for k in raw if k not in _SCENARIO_KEYS and k != _LINE)
    if unknown:
        raise _fail(path, f"scenario {name!r}: unknown key {unknown[0]!r}; expected one of: "
                          f"{', '.join(sorted(_SCENARIO_KEYS))}")
    steps_raw = raw.get("steps")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise _fail(path, f"scenario {name!r}: 'steps' must be a non-empty list")
    steps = tuple(_parse_step(path, name, i, s, line, registry)
                  for i, s in enumerate(steps_raw, 1))
    envs = raw.get("environments")
    if envs is not None and (not isinstance(envs, list) or
                             not all(isinstance(e, str) for e in envs)):
        raise _fail(path, f"scenario {name!r}: environments: expected a list of names")
    stack_mode = raw.get("stack", "shared")
    if stack_mode not in {"shared", "fresh"}:
        raise _fail(path, f"scenario {name!r}: stack: expected 'shared' or 'fresh', "
                          f"got {stack_mode!r}")
    expect = _strip_lines(raw.get("expect") or {})
    spec = ScenarioSpec(
        name=name.strip(), file=path, line=line, steps=steps, expect=expect,
        description=str(raw.get("description") or ""),
        environments=tuple(envs) if envs is not None else None,
        fresh_stack=stack_mode == "fresh",
    )
    # validate thresholds for every environment now, not when the gate runs
    try:
        for env in {"default", *(spec.environments or ())}:
            spec.gates(env)
    except ScenarioSchemaError as exc:
        raise _fail(path, str(exc)) from None
    _check_facts(path, spec)
    return spec


def _check_facts(path: Path, spec: ScenarioSpec) -> None:
    """A gate on a fact no step measures is a typo, caught before anything runs."""
    produced: set[str] = set()
    for step in spec.steps:
        produced |= set(step.facts)
    for fact in spec.expect:
        if fact not in produced:
            raise _fail(path, f"scenario {spec.name!r}: expect.{fact}: no step of this "
                              f"scenario measures {fact!r}; measured facts: "
                              f"{', '.join(sorted(produced)) or 'none'}")


def load_scenario_file(path: Path, registry: StepRegistry | None = None) -> list[ScenarioSpec]:
    """Parse and validate a scenario file against ``registry`` (default: agentverify's
    steps and every installed ``agentverify.steps`` entry point).

    Raises:
        ScenarioSchemaError: naming the file, the scenario, the step and the problem.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(path, f"cannot read ({exc.strerror})") from None
    try:
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        raise _fail(path, f"{where}: {getattr(exc, 'problem', None) or 'invalid YAML'}") \
            from None
    if data is None:
        raise _fail(path, "empty file; expected a scenario (name, steps, expect)")
    registry = registry if registry is not None else default_registry()
    if isinstance(data, dict) and "scenarios" in data:
        items = data["scenarios"]
        if not isinstance(items, list) or not items:
            raise _fail(path, "'scenarios' must be a non-empty list")
        specs = [_parse_scenario(path, item, i, registry) for i, item in enumerate(items, 1)]
    else:
        specs = [_parse_scenario(path, data, 1, registry)]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail(path, f"duplicate scenario name {dupes[0]!r}")
    return specs
