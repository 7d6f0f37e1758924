"""The examples in the modules' docstrings are true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import support_agent

MODULES = sorted(m.name for m in pkgutil.walk_packages(support_agent.__path__, "support_agent."))


def test_every_module_is_listed() -> None:
    assert {"support_agent.app", "support_agent.config", "support_agent.ingest"} <= set(MODULES)


@pytest.mark.parametrize("name", ["support_agent", *MODULES])
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
