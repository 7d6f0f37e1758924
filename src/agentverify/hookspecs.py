"""Hooks other plugins (and conftest.py files) can implement to extend agentverify.

Registered in ``pytest_addhooks``. Factories are ``firstresult``; events are plain.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec(firstresult=True)
def pytest_agentverify_make_backend(name: str, config: Any) -> Any:
    """Return the Backend to run a stack on for backend ``name`` (resolved, never
    ``auto``) and the resolved :class:`~agentverify.config.Config`, or None to leave it to
    the next implementation. The default implementation is the backend registry
    (:func:`agentverify.stack.backend.get_backend`); it runs last."""


@pytest.hookspec
def pytest_agentverify_add_steps(registry: Any) -> None:
    """Add step types to ``registry`` (a :class:`~agentverify.scenarios.registry.StepRegistry`,
    already holding agentverify's steps and the ``agentverify.steps`` entry points), e.g.
    ``registry.add(StepType(...))`` or import a module of ``@step`` functions."""


@pytest.hookspec
def pytest_agentverify_stack_ready(stack: Any) -> None:
    """The shared stack is up (endpoints are in ``stack.endpoints``)."""


@pytest.hookspec
def pytest_agentverify_scenario_finished(result: Any) -> None:
    """A scenario finished; ``result`` is a ScenarioResult with facts and gates."""


@pytest.hookspec
def pytest_agentverify_write_report(journal: Any, report_dir: Any) -> None:
    """Reports are being written; write your own from ``journal``."""
