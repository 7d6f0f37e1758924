"""The parent side of a load run: start the Locust child, read its stream, stop it.

:class:`LoadDriver` starts ``python -m agentverify.load.child`` in a process group of
its own (its Locust workers join that group), reads the child's JSON lines from a
dedicated pipe, shows a progress line every few seconds, and can stop the load early:

* ``abort_on(snapshot)`` is asked about every running snapshot (an SLO breach, see
  :class:`~agentverify.load.stats.SLOAbort`);
* ``poll()`` is called about once a second whatever the child says (the cost budget,
  read from the LLM ledger).

Either returning a reason stops the users gracefully (SIGTERM to the child, which still
writes its result). Whatever happens — a result, an error, a timeout, Ctrl-C in the
parent — the whole group is stopped before :meth:`LoadDriver.run` returns or raises.

:meth:`LoadDriver.start` starts the child ahead of :meth:`~LoadDriver.run`: it imports
Locust and connects its workers (a second or more), then waits for the word to go on its
stdin. A step measures what it compares against (the ledger, a fresh scrape) meanwhile,
so the child's start is off the critical path; :meth:`~LoadDriver.close` stops a child
that was started and never run.

Example:
    >>> plan = LoadPlan(host="http://127.0.0.1:8080", prompts=("hi?",), duration_s=10)
    >>> run = LoadDriver(plan).run()                                  # doctest: +SKIP
    >>> run.result.summary()                                          # doctest: +SKIP
    '1,234 requests in 10.0s (123.4 req/s), p50/p95/p99 12/40/80 ms, 0 failed ...'
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agentverify.errors import LoadTestError
from agentverify.load.plan import LoadPlan
from agentverify.load.stats import ChildError, ChildInfo, LoadResult, Snapshot, parse_line
from agentverify.stack.runstate import OWN_PROCESS_GROUP, RUN_ID_ENV, RunContext

__all__ = ["BackgroundLoad", "LoadDriver", "LoadRun"]

#: seconds the child may take before its first line (imports, workers connecting)
START_ALLOWANCE_S = 60.0
#: seconds between a graceful stop and the result (users finish their request in flight)
STOP_ALLOWANCE_S = 30.0
#: seconds the group gets after SIGTERM at teardown before SIGKILL (after a result the
#: child is already on its way out; after an error or Ctrl-C its figures are not wanted)
STOP_GRACE_S = 2.0


@dataclass
class LoadRun:
    """What one run measured, and whether the driver stopped it early.

    ``log_path`` is the child's output when the driver was given a place for it (a
    temporary log is removed after a successful run).
    """

    result: LoadResult
    snapshots: list[Snapshot] = field(default_factory=list)
    aborted: bool = False
    abort_reason: str | None = None
    log_path: Path | None = None
    info: list[str] = field(default_factory=list)

    def series(self, attr: str) -> list[list[float]]:
        """``[[t, value], ...]`` of one snapshot figure (for the HTML report's plots)."""
        out = []
        for snap in self.snapshots:
            value = getattr(snap, attr)
            if value is not None:
                out.append([round(snap.t, 3), round(float(value), 3)])
        return out


def _tail(path: Path | None, lines: int = 15) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class LoadDriver:
    """Runs one :class:`~agentverify.load.plan.LoadPlan` in a Locust child process.

    Args:
        plan: what to run.
        say: prints one progress line.
        log_path: where the child's own output goes (default: a temporary file).
        progress_interval_s: seconds between progress lines.
        python: the interpreter for the child (default: this one).
        run: the stack's run record: the child's process group (its workers are in it)
            is recorded there while it runs, so ``agentverify reap`` and the next run find
            it if this process is killed.
    """

    def __init__(self, plan: LoadPlan, *, say: Callable[[str], None] = print,
                 log_path: Path | None = None, progress_interval_s: float = 5.0,
                 python: str | None = None, run: RunContext | None = None) -> None:
        self.plan = plan
        self.say = say
        self.log_path = log_path
        self.progress_interval_s = progress_interval_s
        self.python = python or sys.executable
        self.run_record = run
        self._proc: subprocess.Popen[bytes] | None = None
        self._record_key = f"load-{os.getpid()}-{id(self):x}"
        self._workdir: Path | None = None
        self._child_log: Path | None = None
        self._read_fd: int | None = None
        self._closed = False
        self._group_stopped = False
        self._close_lock = threading.Lock()  # run()'s thread and a scenario's cleanup

    # ------------------------------------------------------------------ process group

    def _signal_group(self, sig: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _stop_group(self) -> None:
        """SIGTERM the group, then SIGKILL what is left; idempotent (once the group is
        stopped its id may be another's: it is never signalled again)."""
        proc = self._proc
        if proc is None or self._group_stopped:
            return
        if proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        # the workers may outlive the child: the group goes, whatever is in it
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)
            self._group_stopped = True

    # ------------------------------------------------------------------ start, run, close

    def start(self) -> LoadDriver:
        """Start the child now; it gets ready and waits for :meth:`run` (idempotent).

        Raises:
            LoadTestError: the child could not be started.
        """
        if self._closed:
            raise LoadTestError("this load driver has run already: make a new one")
        if self._proc is not None:
            return self
        workdir = Path(tempfile.mkdtemp(prefix="agentverify-load-"))
        plan_path = workdir / "plan.json"
        plan_path.write_text(self.plan.to_json(), encoding="utf-8")
        log_path = self.log_path or workdir / "locust.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._workdir, self._child_log = workdir, log_path
        read_fd, write_fd = os.pipe()
        self._read_fd = read_fd
        cmd = [self.python, "-m", "agentverify.load.child", "--plan", str(plan_path),
               "--stream-fd", str(write_fd), "--parent-pid", str(os.getpid()), "--wait-go"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.run_record is not None:
            # the reaper proves a recorded process is this run's by this variable
            env[RUN_ID_ENV] = self.run_record.run_id
        try:
            try:
                with open(log_path, "wb") as log:
                    self._proc = subprocess.Popen(
                        cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                        pass_fds=(write_fd,), env=env, **OWN_PROCESS_GROUP)
            finally:
                os.close(write_fd)
            if self.run_record is not None:
                self.run_record.record_process(self._record_key, self._proc.pid,
                                               self._proc.pid)
        except OSError as exc:
            self.close()
            raise LoadTestError(f"cannot start the load child ({self.python}): {exc}") from exc
        except BaseException:  # e.g. Ctrl-C: nothing of it is left behind
            self.close()
            raise
        return self

    def close(self, *, keep_log: bool = False) -> None:
        """Stop the child (and its workers) and remove what it ran from; idempotent, and
        safe from two threads. ``keep_log``: a temporary log stays (an error message
        points at it)."""
        with self._close_lock:
            if self._closed:
                return
            try:
                self._stop_group()
            finally:
                self._closed = True
                self._release(keep_log)

    def _release(self, keep_log: bool) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None
        if self.run_record is not None:
            self.run_record.forget_process(self._record_key)
        if self._workdir is not None:
            # the plan (and a temporary log) go; a failed run keeps its log
            (self._workdir / "plan.json").unlink(missing_ok=True)
            if not keep_log or self.log_path is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def run(self, *, abort_on: Callable[[Snapshot], str | None] | None = None,
            poll: Callable[[], str | None] | None = None,
            on_snapshot: Callable[[Snapshot], None] | None = None) -> LoadRun:
        """Run the load to its end (or an abort) and return what it measured; starts the
        child first unless :meth:`start` did. The child is stopped when this returns.

        Args:
            abort_on: asked about each running snapshot; a reason stops the load.
            poll: called about once a second; a reason stops the load.
            on_snapshot: sees every snapshot (e.g. to plot live).

        Raises:
            LoadTestError: the child could not run the load, died, or never answered.
        """
        snapshots: list[Snapshot] = []
        info: list[str] = []
        keep_log = False
        try:
            self.start()
            proc, read_fd, log_path = self._proc, self._read_fd, self._child_log
            assert proc is not None and proc.stdin is not None
            assert read_fd is not None and log_path is not None
            # the word to go; a child already gone says why on its stream (read below)
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(b"go\n")
                proc.stdin.close()
            try:
                result, abort_reason = self._read(read_fd, snapshots, info, log_path,
                                                  abort_on, poll, on_snapshot)
            except LoadTestError:
                keep_log = True  # the message points at it
                raise
        finally:
            self.close(keep_log=keep_log)
        return LoadRun(result=result, snapshots=snapshots, aborted=abort_reason is not None,
                       abort_reason=abort_reason,
                       log_path=self.log_path, info=info)

    def _read(self, fd: int, snapshots: list[Snapshot], info: list[str], log_path: Path,
              abort_on: Callable[[Snapshot], str | None] | None,
              poll: Callable[[], str | None] | None,
              on_snapshot: Callable[[Snapshot], None] | None,
              ) -> tuple[LoadResult, str | None]:
        proc = self._proc
        assert proc is not None
        plan = self.plan
        started = time.monotonic()
        deadline = started + START_ALLOWANCE_S + plan.duration_s * 1.5 + STOP_ALLOWANCE_S
        stop_deadline: float | None = None
        abort_reason: str | None = None
        next_poll = started + 1.0
        last_progress = 0.0
        buffer = b""
        selector = selectors.DefaultSelector()
        selector.register(fd, selectors.EVENT_READ)
        try:
            while True:
                now = time.monotonic()
                if now > deadline or (stop_deadline is not None and now > stop_deadline):
                    raise LoadTestError(
                        f"the load child gave no result within {now - started:.0f}s; "
                        f"last output ({log_path}):\n{_tail(log_path)}")
                for _key, _ in selector.select(timeout=0.25):
                    chunk = os.read(fd, 65536)
                    if not chunk:  # EOF: the child is gone
                        code = proc.wait(timeout=10)
                        raise LoadTestError(
                            f"the load child exited (code {code}) without a result; "
                            f"last output ({log_path}):\n{_tail(log_path)}")
                    buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    item = parse_line(line.decode("utf-8", errors="replace"))
                    if isinstance(item, LoadResult):
                        return item, abort_reason
                    if isinstance(item, ChildError):
                        raise LoadTestError(f"the load could not run: {item.message}"
                                            + (f"\nlast output ({log_path}):\n"
                                               f"{_tail(log_path)}"
                                               if _tail(log_path) else ""))
                    if isinstance(item, ChildInfo):
                        info.append(item.message)
                        self.say(f"  {item.message}")
                        continue
                    snapshots.append(item)
                    if on_snapshot is not None:
                        on_snapshot(item)
                    if item.t - last_progress >= self.progress_interval_s - 0.5:
                        last_progress = item.t
                        self.say(f"  {item.progress_line()}")
                    if abort_reason is None and abort_on is not None:
                        abort_reason = abort_on(item)
                        if abort_reason is not None:
                            stop_deadline = self._abort(abort_reason)
                if poll is not None and abort_reason is None and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + 1.0
                    abort_reason = poll()
                    if abort_reason is not None:
                        stop_deadline = self._abort(abort_reason)
        finally:
            selector.close()

    def _abort(self, reason: str) -> float:
        """Ask the child to stop (it still writes its result); returns the deadline."""
        self.say(f"  stopping the load early: {reason}")
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
        return time.monotonic() + STOP_ALLOWANCE_S


class BackgroundLoad:
    """A load that runs while other steps do (a spike under a drill, a game day's
    traffic): :meth:`LoadDriver.run` in a thread, stopped gracefully by :meth:`stop`.

    Args:
        driver: the driver of the load (its plan's ``duration_s`` is the longest it runs);
            started beforehand (:meth:`LoadDriver.start`), its users start here at once.
        name: what the load is called in progress lines (a spike, the background).

    Example:
        >>> load = BackgroundLoad(LoadDriver(plan)).start()            # doctest: +SKIP
        >>> ...                                                        # the drill
        >>> load.stop().result.status_codes                            # doctest: +SKIP
        {'200': 2810, '429': 1877}
    """

    def __init__(self, driver: LoadDriver, name: str = "background") -> None:
        self.driver = driver
        self.name = name
        self.started: float | None = None  # unix
        self.snapshots: list[Snapshot] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._run: LoadRun | None = None
        self._error: BaseException | None = None

    def start(self) -> BackgroundLoad:
        self.started = time.time()

        def target() -> None:
            try:
                self._run = self.driver.run(
                    poll=lambda: "stopped by the scenario" if self._stop.is_set() else None,
                    on_snapshot=self.snapshots.append)
            except BaseException as exc:  # handed to the caller of stop()
                self._error = exc

        self._thread = threading.Thread(target=target, name="background-load", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = START_ALLOWANCE_S + STOP_ALLOWANCE_S) -> LoadRun:
        """Stop the users (they finish the request in flight) and return the result.

        Raises:
            LoadTestError: the load failed, or did not stop within ``timeout``.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.driver.close()  # under the driver's lock: its run may be closing too
                raise LoadTestError(f"the background load did not stop within {timeout:g}s")
        if self._error is not None:
            if isinstance(self._error, LoadTestError):
                raise self._error
            raise LoadTestError(f"the background load failed: {self._error}") from self._error
        if self._run is None:
            raise LoadTestError("the background load was never started")
        return self._run
