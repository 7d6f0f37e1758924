"""Hooks other plugins (and conftest.py files) can implement to extend agentverify.

Registered in ``pytest_addhooks``. Factories are ``firstresult``; events are plain.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec(firstresult=True)
def pytest_agentverify_make_backend(name: str, config: Any) -> Any:
    """Return a Backend for ``name`` to use instead of the built-in one, or None."""


@pytest.hookspec
def pytest_agentverify_stack_ready(stack: Any) -> None:
    """The shared stack is up (endpoints are in ``stack.endpoints``)."""


@pytest.hookspec
def pytest_agentverify_scenario_finished(result: Any) -> None:
    """A scenario finished; ``result`` is a ScenarioResult with facts and gates."""


@pytest.hookspec
def pytest_agentverify_write_report(journal: Any, report_dir: Any) -> None:
    """Reports are being written; write your own from ``journal``."""
