"""The pytest plugin: options, fixtures, YAML scenario collection, report hooks.

Only wiring lives here; the work is in :mod:`agentverify.session` and below.

Options: one table (:mod:`agentverify.options`) feeds this plugin and the CLI. Each
``--agentverify-NAME`` is mirrored by the ini key ``agentverify_NAME`` and, for some, an
``AGENTVERIFY_*`` variable; precedence: command line > ini > variable > default.

Scenario files: every ``*.yaml`` / ``*.yml`` in a directory named ``scenarios`` is
collected; each scenario in it is one test item.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentverify._signals import shielded, term_as_interrupt
from agentverify.errors import AgentVerifyError, ScenarioSchemaError, UsageError
from agentverify.gates import format_value

SESSION_KEY = pytest.StashKey["AgentVerifySession | None"]()
#: puts SIGTERM's previous handler back (see :func:`agentverify._signals.term_as_interrupt`)
RESTORE_SIGTERM_KEY = pytest.StashKey["Callable[[], None]"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    from agentverify.options import add_pytest_options

    add_pytest_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from agentverify import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@pytest.hookimpl(trylast=True)
def pytest_agentverify_make_backend(name: str, config: Any) -> Any:
    """The default: the backend registry (another plugin's implementation runs first)."""
    from agentverify.session import registry_backend

    return registry_backend(name, config)


def _wants_agentverify(config: pytest.Config) -> bool:
    """Make the session eagerly only when this run asks for agentverify. Making it loads
    and validates the config; it never asks the Docker engine anything (``auto`` is
    resolved when the first stack is made)."""
    if any(config.getoption(f"agentverify_{d}", default=None) for d in ("env", "config", "backend")):
        return True
    return (Path(str(config.rootpath)) / "agentverify.yaml").is_file()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "agentverify_scenario: a YAML scenario of agentverify")
    config.stash[SESSION_KEY] = None
    if _wants_agentverify(config):
        _session(config)
        # a CI job cancelled with SIGTERM tears its stack down as on Ctrl-C
        config.stash[RESTORE_SIGTERM_KEY] = term_as_interrupt()


def _session(config: pytest.Config) -> Any:
    from agentverify.options import pytest_values
    from agentverify.scenarios.registry import default_registry
    from agentverify.session import AgentVerifySession

    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        return session

    def say(line: str) -> None:
        # looked up per call: the reporter registers after this plugin's pytest_configure
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if tr is None:
            return
        # progress must be live even while a test's output is being captured
        capman = config.pluginmanager.get_plugin("capturemanager")
        ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
        with ctx:
            tr.ensure_newline()
            tr.write_line(f"agentverify: {line}")

    try:
        registry = default_registry()
        config.hook.pytest_agentverify_add_steps(registry=registry)
        session = AgentVerifySession.from_options(
            pytest_values(config, os.environ), root=Path(str(config.rootpath)),
            environ=os.environ, say=say, override_source="pytest options",
            make_backend=lambda name, cfg: config.hook.pytest_agentverify_make_backend(
                name=name, config=cfg))
    except UsageError as exc:
        raise pytest.UsageError(f"agentverify: {exc}") from None
    session.on_stack_ready = lambda stack: config.hook.pytest_agentverify_stack_ready(stack=stack)
    config.stash[SESSION_KEY] = session
    return session


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    av = session.config.stash.get(SESSION_KEY, None)
    if av is None:
        return
    # the reports once the stack is down (its panels were read first), after a failed
    # or interrupted capture or teardown too; neither Ctrl-C nor SIGTERM cuts the teardown
    try:
        with shielded():
            av.close()
    finally:
        if av.journal.scenarios:
            av.write_reports()
            session.config.hook.pytest_agentverify_write_report(journal=av.journal,
                                                                report_dir=av.report_dir)


def pytest_unconfigure(config: pytest.Config) -> None:
    av = config.stash.get(SESSION_KEY, None)
    try:
        if av is not None:  # a crash before sessionfinish: still nothing may leak
            with shielded():
                av.close()
    finally:
        config.stash.get(RESTORE_SIGTERM_KEY, lambda: None)()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    av = terminalreporter.config.stash.get(SESSION_KEY, None)
    if av is None or not av.journal.scenarios:
        return
    from agentverify.report.summary import summary_lines, summary_title

    tr = terminalreporter
    data = av.redactor.scrub(av.journal.to_json())
    tr.section(summary_title(data))
    for line in summary_lines(data, report_dir=av.report_dir):
        tr.write_line(line.text, green=line.status == "pass", red=line.status == "fail",
                      yellow=line.status == "inconclusive", bold=line.bold)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def agentverify_session(request: pytest.FixtureRequest) -> Any:
    """The :class:`~agentverify.session.AgentVerifySession` of this run."""
    return _session(request.config)


@pytest.fixture(scope="session")
def agentverify_config(agentverify_session: Any) -> Any:
    """The resolved :class:`~agentverify.config.Config`."""
    return agentverify_session.config


@pytest.fixture(scope="session")
def agent_stack(agentverify_session: Any) -> Any:
    """The shared :class:`~agentverify.stack.stack.Stack`, up for the whole session."""
    return agentverify_session.stack()


@pytest.fixture
def agent_client(agent_stack: Any) -> Iterator[Any]:
    """An ``httpx.Client`` on the stack's load balancer."""
    from agentverify import _http

    with _http.new_client(base_url=agent_stack.lb_url, timeout=30.0) as client:
        yield client


@pytest.fixture
def prometheus(agent_stack: Any) -> Iterator[Any]:
    """A :class:`~agentverify.monitoring.prometheus.PrometheusClient` on the stack."""
    from agentverify.monitoring.prometheus import PrometheusClient

    client = PrometheusClient(agent_stack.endpoints["prometheus"])
    yield client
    close = getattr(client, "close", None)
    if close:
        close()


# ---------------------------------------------------------------------------- scenarios


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix in {".yaml", ".yml"} and file_path.parent.name == "scenarios":
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFile(pytest.File):
    """A scenarios/*.yaml file: one item per scenario (or one failing item if malformed)."""

    def collect(self) -> Iterator[pytest.Item]:
        from agentverify.scenarios.model import load_scenario_file

        try:
            specs = load_scenario_file(Path(self.path))
        except ScenarioSchemaError as exc:
            yield InvalidScenarioItem.from_parent(self, name=Path(self.path).stem, error=exc)
            return
        av = _session(self.config)
        for spec in specs:
            item = ScenarioItem.from_parent(self, name=f"{spec.name}[{av.pytest_id}]",
                                            spec=spec)
            item.add_marker(pytest.mark.agentverify_scenario)
            if not spec.applies_to(av.env):
                item.add_marker(pytest.mark.skip(
                    reason=f"scenario applies to {', '.join(spec.environments or ())}; "
                           f"this run is {av.env}"))
            yield item


class ScenarioFailed(AssertionError):
    """Gates failed (or the scenario errored); carries the result for the report."""

    def __init__(self, result: Any) -> None:
        super().__init__(result.name)
        self.result = result


class ScenarioItem(pytest.Item):
    """One scenario: runs it on the session's stack and fails on any failed gate."""

    def __init__(self, *, spec: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec

    def runtest(self) -> None:
        av = _session(self.config)
        result = av.run_scenario(self.spec)
        self.user_properties.append(("agentverify", result.to_json()))
        self.config.hook.pytest_agentverify_scenario_finished(result=result)
        if not result.passed:
            raise ScenarioFailed(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, ScenarioFailed):
            r = excinfo.value.result
            lines = [f"scenario {r.name!r} ({self.spec.file}:{self.spec.line}) failed"]
            if r.error:
                lines.append(f"error: {r.error}")
            for g in r.gates:
                lines.append(f"  {g.line()}")
            facts = ", ".join(f"{k}={format_value(v)}" for k, v in sorted(r.facts.items()))
            lines.append(f"facts: {facts or 'none measured'}")
            return "\n".join(lines)
        if isinstance(excinfo.value, AgentVerifyError):
            return f"{type(excinfo.value).__name__}: {excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return Path(self.path), self.spec.line - 1, f"scenario: {self.spec.name}"


class InvalidScenarioItem(pytest.Item):
    """Stands for a malformed scenario file: fails with the one-line schema error."""

    def __init__(self, *, error: ScenarioSchemaError, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        raise self.error

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        return f"invalid scenario file: {self.error}"

    def reportinfo(self) -> tuple[Path, int, str]:
        return Path(self.path), 0, f"invalid scenario file {Path(self.path).name}"
