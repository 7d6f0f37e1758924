"""Shared test configuration: pytester for plugin tests; os.environ restored per test;
how pytest-xdist shares the tests out.

With ``-n`` (scripts/test runs two pytest-xdist workers with ``--dist loadscope``) the
tests of one backend's shared stack (``test_x[local]``, ``test_x[docker]`` in every module)
go to one worker, so each shared stack is started once: pytest keeps one instance of a
parametrized session fixture at a time, so a worker running module after module with both
backends restarted both stacks for every module. Every other test stays with its module
(a module-scoped stack is started once). xdist's own ``loadgroup`` cannot express this
under pytest 9 (its group markers are not seen), so the grouping is a scheduler here.

The scheduler also hands the long work out first (longest-processing-time first): the
shared stacks, then the modules measured longest, then the other integration modules,
the plugin tests, the unit tests. xdist's own order (most tests first) put the unit
modules, hundreds of quick tests, first and a module of one 160 s test last, for one
worker to run while the other waited.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import pytest

from agentverify.stack.backend import backend_names

pytest_plugins = ("pytester",)

#: a test id carrying a backend of the registry: ``[local]``, ``[docker-...]``, ``[...-local]``
_BACKEND_ID = re.compile(r"\[(?:[^\]]*-)?(%s)(?:-[^\]]*)?\]$"
                         % "|".join(map(re.escape, backend_names())))


#: the module scopes measured longest with ``--durations`` (their tests without a backend in
#: the id: those with one go to a ``stack-*`` scope), in that order: 215 s (the example
#: agent), 140 s (the drills' defect test) and 55 s of a 2-worker run of about 800 s
LONGEST_MODULES = ("tests/integration/test_user_agent.py", "tests/integration/test_drills.py",
                   "tests/integration/test_docker_backend.py")


def scope_rank(scope: str) -> tuple[int, int]:
    """Where a scope goes in the queue: shared stacks, then the longest modules, then
    integration, plugin and unit modules."""
    if scope.startswith("stack-"):
        return (0, 0)
    if scope in LONGEST_MODULES:
        return (1, LONGEST_MODULES.index(scope))
    for tier, prefix in enumerate(("tests/integration/", "tests/plugin/"), start=2):
        if scope.startswith(prefix):
            return (tier, 0)
    return (4, 0)


class _RankedQueue(OrderedDict):  # type: ignore[type-arg]
    """xdist's work queue, handing out the lowest-ranked scope first (``popitem(last=
    False)`` is how xdist takes the next one; xdist's own order breaks ties)."""

    def popitem(self, last: bool = True) -> tuple[Any, Any]:
        if last or not self:
            return super().popitem(last=last)
        key = min(self, key=scope_rank)
        return key, self.pop(key)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedStackScheduling(LoadScopeScheduling):
        def __init__(self, config: pytest.Config, log: Any = None) -> None:
            super().__init__(config, log)
            self.workqueue = _RankedQueue()

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
