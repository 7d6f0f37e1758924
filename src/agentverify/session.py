"""One agentverify session: resolved config, the shared stack, the run journal.

Both front doors (the pytest plugin and the CLI) build one :class:`AgentVerifySession`
and pass it explicitly; nothing is global. The shared stack is started on first use and
stopped by :meth:`close` (which the plugin calls at session finish, also after Ctrl-C).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from agentverify.config import Config, load_config, with_overrides
from agentverify.errors import AgentVerifyError, StackError
from agentverify.options import OptionValues
from agentverify.report.journal import RunJournal, ScenarioResult
from agentverify.secrets import Redactor
from agentverify.stack.backend import Backend, get_backend, resolve_backend_name
from agentverify.stack.runstate import default_state_dir
from agentverify.stack.stack import ProgressEvent, Stack

#: ``(backend name, config) -> Backend``: the registry, or the pytest hook around it
BackendFactory = Callable[[str, Config], Backend]


def registry_backend(name: str, config: Config) -> Backend:
    """The default :data:`BackendFactory`: the backend registry."""
    return get_backend(name, config=config)

__all__ = ["AgentVerifySession", "describe_event"]


def describe_event(event: ProgressEvent) -> str | None:
    """One progress line for an event (None for events not worth a line)."""
    if event.state == "ready":
        extra = f" ({event.detail})" if event.detail else ""
        return f"{event.instance} ready in {event.seconds or 0:.2f}s{extra}"
    if event.state == "failed":
        return f"{event.instance} FAILED: {event.detail}"
    if event.state == "info":
        return f"{event.instance}: {event.detail}"
    if event.state == "running-job":
        return f"{event.instance} running"
    return None


class AgentVerifySession:
    """Config, stack and journal for one run.

    Args:
        env: environment name (None: from config / AGENTVERIFY_ENV).
        config_path: config file (None: ./agentverify.yaml or built-in defaults).
        backend: backend name overriding ``stack.backend``.
        overrides: dotted keys from the command line (``{"stack.replicas": 5}``).
        report_dir: where results.json, results.html and stack.json go.
        say: prints one progress line.
        environ: the process environment (``AGENTVERIFY_*``, API keys); default os.environ.
        make_backend: how a backend is made from its name (default: the registry; the
            pytest plugin passes its ``pytest_agentverify_make_backend`` hook).
    """

    def __init__(self, *, env: str | None = None, config_path: str | None = None,
                 backend: str | None = None, overrides: Mapping[str, Any] | None = None,
                 report_dir: str | Path = "reports", say: Callable[[str], None] = print,
                 environ: Mapping[str, str] | None = None,
                 override_source: str = "command line",
                 make_backend: BackendFactory | None = None) -> None:
        overrides = dict(overrides or {})
        if backend:
            overrides["stack.backend"] = backend
        self.config: Config = load_config(config_path, env, overrides=overrides,
                                          environ=environ, override_source=override_source)
        self.env = self.config.environment
        self.report_dir = Path(report_dir)
        self.say = say
        self.environ = environ
        self.make_backend = make_backend or registry_backend
        self._backend_name: str | None = None
        self._pytest_id: str | None = None
        self.journal = RunJournal(env=self.env, backend=self.config.stack.backend)
        self.redactor = Redactor()
        self._stack: Stack | None = None
        self._stack_error: BaseException | None = None
        self._lock = threading.Lock()
        self.on_stack_ready: Callable[[Stack], None] | None = None
        #: the scenario running now, and how much of each stack's start log is journaled
        self._scenario: str | None = None
        self._journaled: dict[int, int] = {}

    @classmethod
    def from_options(cls, values: OptionValues, *, root: Path | None = None,
                     environ: Mapping[str, str] | None = None,
                     say: Callable[[str], None] = print,
                     make_backend: BackendFactory | None = None,
                     override_source: str = "command line") -> AgentVerifySession:
        """A session from resolved :mod:`~agentverify.options` (plugin and CLI alike).

        Relative paths are read from ``root`` (pytest's rootdir; the CLI's working
        directory); ``root/agentverify.yaml`` is the config when none is named.
        """
        root = root or Path.cwd()
        config_path = values.config
        if config_path is None and (root / "agentverify.yaml").is_file():
            config_path = str(root / "agentverify.yaml")
        report_dir = Path(values.report_dir)
        return cls(env=values.env, config_path=config_path, backend=values.backend,
                   overrides=values.overrides(), say=say, environ=environ,
                   report_dir=report_dir if report_dir.is_absolute() else root / report_dir,
                   make_backend=make_backend, override_source=override_source)

    # ------------------------------------------------------------------ backend

    @property
    def backend_name(self) -> str:
        """The backend this run uses; ``auto`` is resolved here, on first use (it asks
        the Docker engine), never when the session is made."""
        if self._backend_name is None:
            self._backend_name = resolve_backend_name(self.config.stack.backend)
            self.journal.backend = self._backend_name
        return self._backend_name

    @property
    def pytest_id(self) -> str:
        """The id scenario items carry (the backend's ``pytest_id()``)."""
        if self._pytest_id is None:
            self._pytest_id = self.make_backend(self.backend_name, self.config).pytest_id()
        return self._pytest_id

    # ------------------------------------------------------------------ stacks

    def _progress(self, event: ProgressEvent) -> None:
        line = describe_event(event)
        if line:
            self.say(line)

    def new_stack(self, config: Config | None = None, *,
                  only: tuple[str, ...] | None = None, jobs: bool = True) -> Stack:
        config = config or self.config
        stack = Stack.from_config(config, backend=self.make_backend(self.backend_name, config),
                                  progress=self._progress, environ=self.environ,
                                  state_dir=default_state_dir(self.environ), only=only,
                                  jobs=jobs)
        self.redactor.extend(stack.redactor)
        return stack

    def stack(self) -> Stack:
        """The shared stack, started on first use (a failed start is not retried)."""
        with self._lock:
            if self._stack_error is not None:
                raise StackError(f"the shared stack failed to start earlier: "
                                 f"{str(self._stack_error).splitlines()[0]}")
            if self._stack is None:
                self.say(f"bringing up the {self.env} stack on the {self.backend_name} "
                         f"backend ({self.config.stack.replicas} agent replicas)")
                stack = self.new_stack()
                try:
                    stack.up()
                except BaseException as exc:
                    self._stack_error = exc
                    with contextlib.suppress(Exception):
                        stack.down()
                    raise
                self.say(f"stack up in {stack.up_seconds:.1f}s (run {stack.run.run_id}, "
                         f"logs in {stack.run.run_dir})")
                self._stack = stack
                self.journal.stack = stack.to_json()
                self._journal_stack(stack)
                stack.write_stack_json(self.report_dir / "stack.json")
                if self.on_stack_ready:
                    self.on_stack_ready(stack)
            return self._stack

    @contextlib.contextmanager
    def fresh_stack(self, *, only: tuple[str, ...] | None = None, jobs: bool = True,
                    prepare: Callable[[Stack], None] | None = None,
                    **overrides: Any) -> Iterator[Stack]:
        """A stack of its own (e.g. ``fresh_stack(**{"stack.replicas": 5})``); ``only``:
        just those services and their dependencies; ``jobs=False``: without the one-off
        jobs; ``prepare(stack)`` runs before it is brought up (:meth:`Stack.prepare`)."""
        config = with_overrides(self.config, overrides, source="fresh stack") if overrides \
            else self.config
        stack = self.new_stack(config, only=only, jobs=jobs)
        if prepare is not None:
            prepare(stack)
        with stack:
            self._journal_stack(stack)
            try:
                yield stack
            finally:
                self._journal_starts(stack)

    def _journal_stack(self, stack: Stack) -> None:
        """A stack that came up: when, how long it took (``prepared_s``: of that, the
        work :meth:`Stack.prepare` gave it, such as a restore), for which scenario."""
        up = stack.up_seconds or 0.0
        self.journal.stacks.append({"run_id": stack.run.run_id if stack.run else None,
                                    "started": round(time.time() - up, 3),
                                    "up_s": round(up, 3),
                                    "prepared_s": round(stack.prepared_seconds, 3),
                                    "scenario": self._scenario})

    def _journal_starts(self, stack: Stack) -> None:
        """The instance starts of ``stack`` not journaled yet (what a gate spends on them)."""
        done = self._journaled.get(id(stack), 0)
        entries = stack.start_log[done:]
        self._journaled[id(stack)] = done + len(entries)
        for instance, role, started, ready in entries:
            self.journal.starts.append({"instance": instance, "role": role,
                                        "started": round(started, 3),
                                        "ready": None if ready is None else round(ready, 3),
                                        "scenario": self._scenario})

    # ------------------------------------------------------------------ scenarios

    def run_scenario(self, spec: Any) -> ScenarioResult:
        """Run one scenario on the shared (or a fresh) stack and journal the result."""
        from agentverify.scenarios.runner import ScenarioContext, restore_baseline, run_scenario

        t0 = time.monotonic()
        self._scenario = spec.name
        try:
            cm = self.fresh_stack() if spec.fresh_stack else contextlib.nullcontext(
                self.stack())
            with cm as stack:
                ctx = ScenarioContext(stack, self.config, env=self.env,
                                      report_dir=self.report_dir, say=self.say,
                                      backend=self.backend_name, new_stack=self.fresh_stack,
                                      journal=self.journal)
                try:
                    result = run_scenario(spec, ctx)
                finally:
                    ctx.close()
                    if not spec.fresh_stack:
                        try:
                            restore_baseline(stack, self.config, self.say)
                        except AgentVerifyError as exc:
                            self._stack_error = exc
                            self.say(f"could not restore the shared stack: {exc}")
                        finally:
                            self._journal_starts(stack)
        except AgentVerifyError as exc:
            result = ScenarioResult(name=spec.name, file=str(spec.file),
                                    error=self.redactor(str(exc)),
                                    seconds=time.monotonic() - t0)
            result.gates = [g.evaluate({}) for g in spec.gates(self.env)]
        result.error = self.redactor(result.error) if result.error else None
        self.journal.add(result)
        # the journal after every scenario (a crash still leaves it); the HTML page, with
        # the dashboard's panels, once at the end (pytest_sessionfinish, also on Ctrl-C)
        self.write_reports(html=False)
        return result

    # ------------------------------------------------------------------ reports

    def write_reports(self, *, html: bool = True) -> list[Path]:
        """results.json, junit.xml and (``html``) results.html; a failing writer is
        reported, never raised."""
        written = []
        try:
            written.append(self.journal.write_json(self.report_dir / "results.json",
                                                   redact=self.redactor.scrub))
        except OSError as exc:
            self.say(f"could not write results.json: {exc}")
        from agentverify.report.html import write_html
        from agentverify.report.junit import write_junit

        writers = [("junit.xml", write_junit)] + ([("results.html", write_html)] if html else [])
        for name, writer in writers:
            try:
                written.append(writer(self.journal, self.report_dir / name,
                                      redact=self.redactor.scrub))
            except Exception as exc:  # a broken report must not fail the run
                self.say(f"could not write {name}: {type(exc).__name__}: {exc}")
        return written

    def close(self) -> None:
        """Stop the shared stack (idempotent), after the report's dashboard panels were
        read from its Prometheus."""
        with self._lock:
            stack, self._stack = self._stack, None
        if stack is None:
            return
        # the report's dashboard panels need this stack's Prometheus: before it goes
        from agentverify.report.panels import record_panels

        try:
            record_panels(self.journal, stack, say=self.say)
        finally:  # even a Ctrl-C during the capture must not leave the stack up
            self.say("tearing the stack down")
            stack.down()
