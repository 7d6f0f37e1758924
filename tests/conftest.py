"""Shared test configuration: pytester for plugin tests; os.environ restored per test;
how pytest-xdist shares the tests out.

With ``-n`` (scripts/test runs two pytest-xdist workers with ``--dist loadscope``) the
tests of one backend's shared stack (``test_x[local]``, ``test_x[docker]`` in every module)
go to one worker, so each shared stack is started once: pytest keeps one instance of a
parametrized session fixture at a time, so a worker running module after module with both
backends restarted both stacks for every module. Every other test stays with its module
(a module-scoped stack is started once). xdist's own ``loadgroup`` cannot express this
under pytest 9 (its group markers are not seen), so the grouping is a scheduler here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from agentverify.stack.backend import backend_names

pytest_plugins = ("pytester",)

#: a test id carrying a backend of the registry: ``[local]``, ``[docker-...]``, ``[...-local]``
_BACKEND_ID = re.compile(r"\[(?:[^\]]*-)?(%s)(?:-[^\]]*)?\]$"
                         % "|".join(map(re.escape, backend_names())))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedStackScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            match = _BACKEND_ID.search(nodeid)
            return f"stack-{match.group(1)}" if match else super()._split_scope(nodeid)

    return SharedStackScheduling(config, log)


@pytest.fixture(autouse=True)
def _restore_os_environ() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
