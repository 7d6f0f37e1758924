"""The ``agentverify`` command.

    agentverify up     --env dev [--backend local]   a live stack; Ctrl-C tears it down
    agentverify run    --env staging [PATHS]         the bundled gate, reports in reports/
    agentverify config --env staging                 validate and show the resolved config
    agentverify reap                                 remove what killed runs left behind
    agentverify compose --env production             the stack as docker-compose.yml (+ files)
    agentverify images build|list                    the stack's images, built without a registry
    agentverify report [results.json] [--compare OTHER.json] [--out DIR]
                                                     re-render the reports from a journal

Exit codes: 0 success, 1 a gate failed, 2 bad input (config, scenario, arguments),
3 the stack could not be brought up, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentverify._signals import shielded, term_as_interrupt
from agentverify.errors import AgentVerifyError, UsageError
from agentverify.options import add_cli_options, as_pytest_args, cli_values

__all__ = ["main"]

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_STACK, EXIT_INTERRUPTED = 0, 1, 2, 3, 130




def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentverify",
        description="Rehearse deploy, rollout, rollback, backup, load and faults of an "
                    "AI-agent stack, and gate on the measured figures.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring up the stack and hold it until Ctrl-C")
    add_cli_options(up, "up")
    run = sub.add_parser("run", help="run scenarios (default: ./scenarios) and write reports")
    add_cli_options(run, "run")
    run.add_argument("paths", nargs="*", help="scenario files or directories")
    run.add_argument("-k", dest="keyword", help="only scenarios matching this expression")
    cfg = sub.add_parser("config", help="validate the config and print the resolved values")
    add_cli_options(cfg, "config")
    sub.add_parser("reap", help="stop processes/containers left by killed runs")
    _add_compose_cli(sub)
    _add_images_cli(sub)
    rep = sub.add_parser("report", help="re-render results.html and junit.xml from a journal "
                                        "and print its summary")
    rep.add_argument("journal", nargs="?", default="reports/results.json",
                     help="a run's results.json (default: reports/results.json)")
    rep.add_argument("--compare", metavar="OTHER.json",
                     help="another run's results.json: every gate beside its figure there")
    rep.add_argument("--out", metavar="DIR",
                     help="where results.html and junit.xml go (default: beside the journal)")
    return parser


def _add_compose_cli(sub: Any) -> None:
    from agentverify.compose import DEFAULT_OUTPUT

    p = sub.add_parser(
        "compose", help="render the stack as docker-compose.yml (+ its config files)",
        description="Render the seed's stack for users who deploy with docker-compose.")
    add_cli_options(p, "compose", defaults={"env": "production"})
    p.add_argument("--output", default=DEFAULT_OUTPUT,
                   help=f"compose file to write; config files go next to it "
                        f"(default: {DEFAULT_OUTPUT})")


def _add_images_cli(sub: Any) -> None:
    images = sub.add_parser(
        "images", help="build the stack's container images without a registry; list them",
        description="Build every image the docker backend needs with no container "
                    "registry (debootstrap + docker import + a local wheelhouse), or list them.")
    actions = images.add_subparsers(dest="images_action", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="build what is missing or out of date; tag the roles")
    listing = actions.add_parser("list", help="show each role's image and whether it exists")
    for p in (build, listing):
        add_cli_options(p, "images")
    build.add_argument("--rebuild", action="store_true",
                       help="rebuild the base and runtime images even when their tags exist")
    build.add_argument("--project-dir",
                       help="agentverify source tree to build the wheel from "
                            "(default: the one this agentverify runs from)")


def _session(args: argparse.Namespace, **kwargs: Any) -> Any:
    from agentverify.session import AgentVerifySession

    return AgentVerifySession.from_options(cli_values(args, os.environ), environ=os.environ,
                                           **kwargs)


# ------------------------------------------------------------------------------ up


class _LiveProgress:
    """A live table of instances while the stack comes up (plain lines without a TTY)."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.rows: dict[str, tuple[str, str]] = {}
        self.live: Any = None
        self._lock = threading.Lock()

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title="agentverify: starting the stack", show_edge=False)
        table.add_column("instance")
        table.add_column("state")
        table.add_column("seconds", justify="right")
        colours = {"ready": "green", "failed": "red", "starting": "yellow",
                   "running-job": "yellow"}
        for name, (state, secs) in self.rows.items():
            table.add_row(name, f"[{colours.get(state, 'white')}]{state}[/]", secs)
        return table

    def __call__(self, event: Any) -> None:
        from agentverify.session import describe_event

        with self._lock:
            if event.state in {"stopping", "stopped"} and self.live is None:
                return
            if event.state == "info":
                self.console.print(f"[dim]{event.instance}: {event.detail}[/]")
                return
            secs = f"{event.seconds:.2f}" if event.seconds is not None else ""
            self.rows[event.instance] = (event.state, secs)
            if self.live is not None:
                self.live.update(self._table())
            elif not self.console.is_terminal:
                line = describe_event(event)
                if line:
                    self.console.print(line)

    def __enter__(self) -> _LiveProgress:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._table(), console=self.console, refresh_per_second=8)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None


def cmd_up(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False, soft_wrap=True)
    session = _session(args, say=lambda line: console.print(f"agentverify: {line}"))
    term_as_interrupt()  # SIGTERM (a CI job cancelled, `kill`) tears the stack down too
    stack = session.new_stack()
    progress = _LiveProgress(console)
    stack.progress = progress
    try:
        with progress:
            stack.up()
        path = stack.write_stack_json(session.report_dir / "stack.json")
        table = Table(title=f"agentverify stack: {session.env} on {session.backend_name} "
                            f"(up in {stack.up_seconds:.1f}s)")
        table.add_column("service")
        table.add_column("url")
        table.add_column("version")
        for name, info in stack.to_json()["services"].items():
            table.add_row(name, info["url"], info.get("version", ""))
        console.print(table)
        console.print(f"endpoints written to {path}; logs in {stack.run.run_dir}")
        console.print("holding the stack; press Ctrl-C to tear it down")
        reported: set[str] = set()
        while True:
            time.sleep(1.0)
            for handle in stack.instances():
                status = handle.status()
                if not status.running and handle.name not in reported:
                    reported.add(handle.name)
                    console.print(f"[red]{handle.name} {status}[/]; last log lines:\n"
                                  f"{stack.redactor(handle.logs(10))}")
    except KeyboardInterrupt:
        console.print("agentverify: tearing the stack down")
        return EXIT_INTERRUPTED if not stack.is_up else EXIT_OK
    finally:
        with shielded():  # a second Ctrl-C, or a SIGTERM, must not cut the teardown
            stack.down()
        console.print("agentverify: stack is down")


# ------------------------------------------------------------------------------ run


def cmd_run(args: argparse.Namespace) -> int:
    import subprocess

    # validate config up front: a bad file is exit code 2 with one line, not a pytest error
    session = _session(args, say=lambda line: None)
    paths = args.paths or ["scenarios"]
    for p in paths:
        if not Path(p).exists():
            raise UsageError(f"{p}: no such scenario file or directory")
    # pytest runs in a child process: a clean interpreter for assertion rewriting, and the
    # gate is not bent by the host project's own test settings (addopts, warning filters)
    # the same options, passed on as given: the child resolves them (and `auto`) itself
    values = cli_values(args, os.environ)
    # plugins a gate has no use for stay out: Locust's gevent-patches the host; anyio's
    # imports its event-loop backends (0.5 s of every run); unraisableexception runs a
    # collection of the whole heap, five times, on the way out. No assertion rewriting:
    # a scenario is YAML, and rewriting would recompile agentverify's own modules (a
    # plugin's) from source at every run where bytecode is not written (0.5-0.9 s)
    argv = [sys.executable, "-m", "pytest", *paths, "-p", "no:cacheprovider", "-p", "no:locust",
            "-p", "no:anyio", "-p", "no:unraisableexception", "--assert=plain",
            "-o", "addopts=", "-o", "filterwarnings=default", "-rfE",
            f"--agentverify-env={session.env}",
            *as_pytest_args(values, ("config", "backend", "set", "load_workers")),
            f"--agentverify-report-dir={session.report_dir.resolve()}"]
    if args.keyword:
        argv += ["-k", args.keyword]
    # a SIGTERM for this process alone (a CI job cancelled, `kill PID`) goes on to pytest,
    # which tears its stack down as on Ctrl-C (one sent to the whole group reaches it too;
    # it heeds the first); set before the child exists, so none is lost in between
    child: list[subprocess.Popen[bytes]] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: [p.send_signal(signal.SIGTERM)
                                                         for p in child])
    proc = subprocess.Popen(argv)
    child.append(proc)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        # the terminal's Ctrl-C reached pytest too; let it tear its stack down
        code = proc.wait()
    if code < 0 and -code in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL):
        return EXIT_INTERRUPTED  # pytest was killed before it could say so itself
    return {0: EXIT_OK, 1: EXIT_GATE, 2: EXIT_INTERRUPTED, 4: EXIT_USAGE,
            5: EXIT_USAGE}.get(code, EXIT_STACK)


# ------------------------------------------------------------------------------ misc


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from agentverify.config import environment_names

    session = _session(args, say=lambda line: None)
    data = session.config.model_dump(mode="json")
    print(yaml.safe_dump(data, sort_keys=False), end="")
    envs = environment_names(args.config)
    print(f"# {session.config.source}: valid; environments: {', '.join(envs)}; "
          f"resolved for {session.env}, backend {session.backend_name}", file=sys.stderr)
    return EXIT_OK


def cmd_reap(args: argparse.Namespace) -> int:
    from agentverify.stack.backend import BACKENDS, get_backend
    from agentverify.stack.stack import reap_leftovers

    backends = []
    for name in BACKENDS:
        try:
            backends.append(get_backend(name))
        except AgentVerifyError:  # e.g. docker not installed: nothing of it to reap
            continue
    reaped = reap_leftovers(backends)
    for item in reaped:
        print(f"reaped {item}")
    print(f"agentverify: {len(reaped)} leftover(s) reaped")
    return EXIT_OK


# ------------------------------------------------------------------------------ compose, images


def cmd_compose(args: argparse.Namespace) -> int:
    from agentverify.compose import write_compose
    from agentverify.config import load_config

    values = cli_values(args, os.environ)
    # rendered from the file alone: AGENTVERIFY_* overrides of this shell must not leak
    # into files that are committed
    config = load_config(values.config, values.env, environ={})
    written = write_compose(config, args.output)
    for path in written:
        print(f"wrote {path}")
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_images(args: argparse.Namespace) -> int:
    """``agentverify images build|list``: 0 ok, 2 usage / missing tool (one line), 3 failure."""
    from agentverify.config import load_config
    from agentverify.errors import BackendUnavailable
    from agentverify.images import build_images

    try:
        values = cli_values(args, os.environ)
        config = load_config(values.config, values.env, overrides=values.overrides())
        if args.images_action == "list":
            return _list_images(config)
        report = build_images(config, progress=_say, rebuild=getattr(args, "rebuild", False),
                              project_dir=getattr(args, "project_dir", None))
        if report.missing and not config.stack.pull:
            print(f"agentverify: error: missing image(s) {', '.join(report.missing)}: "
                  "pull them yourself or set stack.pull: true", file=sys.stderr)
            return 2
        return 0
    except (UsageError, BackendUnavailable) as exc:
        print(f"agentverify: error: {exc}", file=sys.stderr)
        return 2
    except AgentVerifyError as exc:
        print(f"agentverify: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3


def _list_images(config: Any) -> int:
    from agentverify.images import list_images

    rows = list_images(config)
    width = max(len(label) for label, _, _ in rows)
    for label, name, state in rows:
        print(f"{label:<{width}}  {name:<32}  {state}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.text import Text

    from agentverify.report.compare import compare_lines, compare_runs
    from agentverify.report.html import write_html
    from agentverify.report.journal import read_journal
    from agentverify.report.junit import write_junit
    from agentverify.report.summary import summary_lines, summary_title

    data = read_journal(args.journal)
    other = read_journal(args.compare) if args.compare else None
    out = Path(args.out) if args.out else Path(args.journal).parent
    try:
        write_html(data, out / "results.html", compare=other, compare_label=args.compare or "")
        write_junit(data, out / "junit.xml")
    except OSError as exc:
        raise UsageError(f"{out}: cannot write the reports ({exc.strerror or exc})") from exc
    console = Console(soft_wrap=True, highlight=False)
    styles = {"pass": "green", "fail": "red", "info": ""}
    lines = summary_lines(data, report_dir=out, files=("results.html", "junit.xml"))
    if other is not None:
        lines[-1:-1] = compare_lines(compare_runs(data, other), args.compare)
    console.rule(summary_title(data))
    for line in lines:
        console.print(Text(line.text, style=styles[line.status] + (" bold" if line.bold else "")))
    return EXIT_OK


COMMANDS = {"up": cmd_up, "run": cmd_run, "config": cmd_config, "reap": cmd_reap,
            "compose": cmd_compose, "images": cmd_images, "report": cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"agentverify: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AgentVerifyError as exc:
        print(f"agentverify: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_STACK
    except KeyboardInterrupt:
        print("agentverify: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
