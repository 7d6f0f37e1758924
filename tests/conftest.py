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

A test marked ``quiet_machine`` runs while the other worker runs nothing: its zero-failure
gate (a rolling update on docker under a probe) measures the deployment, and on two cores
the other worker's heavy test (a high-load drill, a Locust run) starved its containers into
10 s client timeouts in CI twice. The other worker finishes the test it is in, then waits
(a file lock: every test holds it shared, a quiet one exclusively, behind a turnstile so
the shared holders cannot starve it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
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


#: the directory of the quiet_machine lock, made by the xdist controller for its workers
_LOCK_DIR_ENV = "AGENTVERIFY_TEST_LOCK_DIR"
_LOCK_DIR = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "quiet_machine: runs while the other xdist worker runs nothing (a "
        "zero-failure gate a concurrent heavy test can starve on two cores)")
    if not hasattr(config, "workerinput") and (config.getoption("numprocesses", 0) or 0):
        # the controller, before it starts its workers (they inherit the environment)
        directory = tempfile.mkdtemp(prefix="agentverify-tests-lock-")
        config.stash[_LOCK_DIR] = directory
        os.environ[_LOCK_DIR_ENV] = directory


def pytest_unconfigure(config: pytest.Config) -> None:
    # only the session that made it (a pytester session inside a test inherits the variable)
    directory = config.stash.get(_LOCK_DIR, None)
    if directory is not None:
        os.environ.pop(_LOCK_DIR_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def machine_lock(directory: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the workers' machine lock in ``directory``: shared, or exclusive (no other
    holder). An exclusive taker first holds the turnstile, which every shared taker must
    pass, so shared holders coming and going cannot keep it waiting."""
    with open(directory / "turnstile", "a") as turnstile, open(directory / "machine", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            if not exclusive:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if exclusive:
                fcntl.flock(turnstile, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    directory = os.environ.get(_LOCK_DIR_ENV)
    if directory is None or not hasattr(item.config, "workerinput") or \
            not os.path.isdir(directory):
        return (yield)
    quiet = item.get_closest_marker("quiet_machine") is not None
    with machine_lock(Path(directory), exclusive=quiet):
        return (yield)


@pytest.fixture(autouse=True)
def _restore_os_environ() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
