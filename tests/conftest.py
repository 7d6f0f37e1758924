"""Shared test configuration: pytester for plugin tests; os.environ restored per test;
the groups pytest-xdist keeps together.

With ``-n`` (scripts/test runs two workers), the tests of one backend's shared stack
(``test_x[docker]``, ``test_x[local]``) stay on one worker, so each shared stack is
started once; every other test stays with its module (module-scoped stacks are
started once too).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest_plugins = ("pytester",)

_BACKEND_PARAMS = ("backend_name",)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        callspec = getattr(item, "callspec", None)
        backend = next((callspec.params[p] for p in _BACKEND_PARAMS
                        if callspec is not None and p in callspec.params), None)
        group = f"stack-{backend}" if backend else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(name=group))


@pytest.fixture(autouse=True)
def _restore_os_environ() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
