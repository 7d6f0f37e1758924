"""Shared test configuration: pytester for plugin tests; os.environ restored per test.

With ``-n`` (scripts/test runs two pytest-xdist workers, ``--dist loadscope``) a module's
tests stay on one worker, so a module-scoped stack is started once; each worker starts a
backend's session-shared stack at most once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest_plugins = ("pytester",)


@pytest.fixture(autouse=True)
def _restore_os_environ() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
