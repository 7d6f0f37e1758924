"""The options of a run: one table that feeds the pytest plugin and the CLI alike.

Each :class:`Option` is spelled three ways — ``--agentverify-NAME`` and the ini key
``agentverify_NAME`` for pytest, ``--NAME`` for the ``agentverify`` command — and may be
given by an ``AGENTVERIFY_*`` variable. One resolver applies one precedence everywhere::

    command line > pytest ini > AGENTVERIFY_* variable > default

Example:
    >>> values = resolve_options({"env": "staging"}, environ={"AGENTVERIFY_BACKEND": "local"})
    >>> values.env, values.backend, values.report_dir
    ('staging', 'local', 'reports')
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentverify.errors import UsageError

__all__ = ["OPTIONS", "Option", "OptionValues", "add_cli_options", "add_pytest_options",
           "resolve_options"]


def _backend_choices() -> list[str]:
    from agentverify.stack.backend import backend_names

    return ["auto", *backend_names()]


@dataclass(frozen=True)
class Option:
    """One option of a run."""

    name: str
    help: str
    #: ``str``, ``int`` or ``list`` (repeatable on the command line, lines in ini)
    kind: str = "str"
    default: Any = None
    #: the ``AGENTVERIFY_*`` variable that may give it (``None``: none)
    env: str | None = None
    metavar: str | None = None
    #: valid values, computed when the help is shown or a value is checked
    choices: Callable[[], list[str]] | None = None
    #: ``agentverify`` subcommands that take it (the pytest plugin takes every option)
    commands: tuple[str, ...] = ("up", "run", "config", "images", "compose")

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def pytest_flag(self) -> str:
        return f"--agentverify-{self.name}"

    @property
    def ini(self) -> str:
        return f"agentverify_{self.dest}"

    @property
    def cli_flag(self) -> str:
        return f"--{self.name}"

    def shown_metavar(self) -> str | None:
        if self.choices is not None:
            return "{" + ",".join(self.choices()) + "}"
        return self.metavar

    def describe(self) -> str:
        extra = f" (env {self.env})" if self.env else ""
        return self.help + extra


OPTIONS: tuple[Option, ...] = (
    Option("env", "environment overlay to verify (dev, staging, production...)",
           env="AGENTVERIFY_ENV"),
    Option("config", "config file (default: ./agentverify.yaml, else built-in defaults)",
           env="AGENTVERIFY_CONFIG"),
    Option("backend", "where the stack runs: auto (docker when an engine answers, else "
                      "local) or a backend name", env="AGENTVERIFY_BACKEND",
           choices=_backend_choices, commands=("up", "run", "config")),
    Option("report-dir", "directory for results.json / results.html / stack.json",
           default="reports", env="AGENTVERIFY_REPORT_DIR", commands=("up", "run", "config")),
    Option("load-workers", "Locust worker processes for load steps (0: in one process)",
           kind="int", commands=("run",)),
    Option("set", "override a config key, e.g. stack.replicas=5 (repeatable)", kind="list",
           metavar="KEY=VALUE", default=(), commands=("up", "run", "config", "images")),
)


@dataclass(frozen=True)
class OptionValues:
    """The resolved options (attribute per option ``dest``)."""

    env: str | None = None
    config: str | None = None
    backend: str | None = None
    report_dir: str = "reports"
    set: tuple[str, ...] = ()
    load_workers: int | None = None
    #: where each value came from, for messages (``--agentverify-backend``, ``AGENTVERIFY_ENV``...)
    sources: Mapping[str, str] = field(default_factory=dict)

    def overrides(self) -> dict[str, Any]:
        """The dotted config overrides these options stand for (``--set``, load workers)."""
        from agentverify.config import parse_override

        out = dict(parse_override(item) for item in self.set)
        if self.load_workers is not None:
            out["load.workers"] = self.load_workers
        return out


def _convert(option: Option, value: Any, source: str) -> Any:
    if option.kind == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            raise UsageError(f"{source}: expected an integer, got {value!r}") from None
    if option.kind == "list":
        if isinstance(value, str):
            return tuple(line.strip() for line in value.splitlines() if line.strip())
        return tuple(str(v) for v in value)
    # choices are shown in the help; the config validates them (one message, one place)
    return str(value)


def _given(value: Any) -> bool:
    return value not in (None, "", [], ())


def resolve_options(cmdline: Mapping[str, Any], *, ini: Mapping[str, Any] | None = None,
                    environ: Mapping[str, str] | None = None) -> OptionValues:
    """Apply the precedence to every option.

    Args:
        cmdline: ``dest -> value`` given on the command line (``None`` / empty: not given).
        ini: ``dest -> value`` from pytest's ini (lines for list options).
        environ: the process environment (``AGENTVERIFY_*``); default: none.

    Raises:
        UsageError: a value of the wrong kind, naming where it came from.
    """
    ini = ini or {}
    environ = environ or {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        candidates = [(cmdline.get(opt.dest), f"{opt.pytest_flag} / {opt.cli_flag}"),
                      (ini.get(opt.dest), f"ini {opt.ini}")]
        if opt.env:
            candidates.append((environ.get(opt.env), opt.env))
        for value, source in candidates:
            if _given(value):
                values[opt.dest] = _convert(opt, value, source)
                sources[opt.dest] = source
                break
        else:
            if opt.default is not None:
                values[opt.dest] = opt.default if opt.kind != "list" else tuple(opt.default)
    return OptionValues(**values, sources=sources)


def add_pytest_options(parser: Any) -> None:
    """Register every option with pytest: ``--agentverify-NAME`` and ini ``agentverify_NAME``."""
    group = parser.getgroup("agentverify", "agentverify: production-readiness rehearsals")
    for opt in OPTIONS:
        kwargs: dict[str, Any] = {"dest": f"agentverify_{opt.dest}", "metavar": opt.shown_metavar(),
                                  "help": f"{opt.describe()} (ini: {opt.ini})"}
        if opt.kind == "list":
            kwargs.update(action="append", default=[])
        else:
            kwargs.update(default=None, type=int if opt.kind == "int" else str)
        group.addoption(opt.pytest_flag, **kwargs)
        parser.addini(opt.ini, help=opt.help, type="linelist" if opt.kind == "list" else "string",
                      default=[] if opt.kind == "list" else None)


def pytest_values(config: Any, environ: Mapping[str, str]) -> OptionValues:
    """The resolved options of a pytest run."""
    cmdline = {opt.dest: config.getoption(f"agentverify_{opt.dest}", default=None)
               for opt in OPTIONS}
    ini = {opt.dest: config.getini(opt.ini) for opt in OPTIONS}
    return resolve_options(cmdline, ini=ini, environ=environ)


def add_cli_options(parser: argparse.ArgumentParser, command: str, *,
                    defaults: Mapping[str, str] | None = None) -> None:
    """Register the options ``command`` takes with an argparse (sub)parser.

    ``defaults`` changes what an option means when not given, for this command only
    (``compose`` renders ``production`` unless told otherwise).
    """
    defaults = defaults or {}
    for opt in OPTIONS:
        if command not in opt.commands:
            continue
        help_text = opt.describe()
        if opt.dest in defaults:
            help_text += f" (default here: {defaults[opt.dest]})"
        kwargs: dict[str, Any] = {"dest": opt.dest, "metavar": opt.shown_metavar(),
                                  "help": help_text}
        if opt.kind == "list":
            kwargs.update(action="append", default=[])
        else:
            kwargs.update(default=defaults.get(opt.dest), type=int if opt.kind == "int" else str)
        parser.add_argument(opt.cli_flag, **kwargs)


def cli_values(args: argparse.Namespace, environ: Mapping[str, str]) -> OptionValues:
    """The resolved options of an ``agentverify`` command."""
    return resolve_options({opt.dest: getattr(args, opt.dest, None) for opt in OPTIONS},
                           environ=environ)


def as_pytest_args(values: OptionValues, names: Iterable[str] | None = None) -> list[str]:
    """The resolved options as ``--agentverify-*`` arguments (for a child pytest run)."""
    out: list[str] = []
    wanted = set(names) if names is not None else None
    for opt in OPTIONS:
        if wanted is not None and opt.dest not in wanted:
            continue
        value = getattr(values, opt.dest)
        if not _given(value):
            continue
        for item in (value if opt.kind == "list" else (value,)):
            out.append(f"{opt.pytest_flag}={item}")
    return out
