"""Run records: what each run started, so nothing outlives it.

Every run gets a run id and a directory under the state dir::

    $AGENTVERIFY_STATE_DIR (default ~/.local/state/agentverify)/
      runs/<run_id>/run.json        owner pid + start time, backend, processes started
      runs/<run_id>/services/...    per-instance conf/, data/ and log

A run that ends normally removes its processes and marks the record closed. A run
killed with SIGKILL cannot; the next run finds the record, sees its owner is gone, and
reaps what it left: each recorded process group is killed, but only after
:func:`belongs_to_run` proves the process is still this run's (its environment carries
the run id, or its log file or working directory is in the run directory), so a
recycled pid is never touched. Containers are reaped by label in the docker backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["InstanceDirs", "RunContext", "belongs_to_run", "default_state_dir", "kill_group",
           "owner_alive", "process_alive", "reap_stale_runs", "terminate_group",
           "OWN_PROCESS_GROUP", "RUN_ID_ENV"]

RUN_ID_ENV = "AGENTVERIFY_RUN_ID"

#: ``subprocess.Popen`` keywords for a process of ours: a process group of its own (so it
#: and its children are stopped, and reaped, by group id, and a Ctrl-C at the terminal
#: reaches only agentverify, which stops them in order), but the caller's session. Not a
#: session of its own (``start_new_session``): Linux's autogroup scheduler shares the CPU
#: per session, so a stack of 15 services in 15 sessions took 15 shares of the machine
#: against one for all of the docker engine's containers: beside a local load spike a
#: container's fixed work took 4.7 times as long as idle at the 90th percentile (1.9 times
#: with the stack in one session), and a docker rolling update's probe timed out.
OWN_PROCESS_GROUP: dict[str, Any] = {"process_group": 0}
KEEP_FINISHED_RUNS = 5


def default_state_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("AGENTVERIFY_STATE_DIR"):
        return Path(env["AGENTVERIFY_STATE_DIR"])
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "agentverify"


def _proc_start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (field 22 of /proc/pid/stat), to tell pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces; fields after the last ')' are fixed
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def owner_alive(pid: int, start_time: str | None) -> bool:
    return process_alive(pid) and (start_time is None or _proc_start_time(pid) == start_time)


def belongs_to_run(pid: int, run_id: str, run_dir: Path | str) -> bool:
    """Whether ``pid`` is a process this run started (safe against recycled pids).

    A process of ours carries the run id in its environment; but servers that rewrite
    their process title (redis-server, nginx) overwrite that memory, so a process whose
    stdout/stderr (our log file) or working directory lies inside the run directory is
    ours too.
    """
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    if f"{RUN_ID_ENV}={run_id}".encode() in environ.split(b"\0"):
        return True
    prefix = str(run_dir).rstrip("/") + "/"
    for link in ("fd/1", "fd/2", "cwd"):
        try:
            target = os.readlink(f"/proc/{pid}/{link}").removesuffix(" (deleted)")
        except OSError:
            continue
        if target.startswith(prefix):
            return True
    return False


def _pids_in_group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid:
                pids.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return pids


def terminate_group(proc: subprocess.Popen[Any], *, sig: int = signal.SIGTERM,
                    grace: float = 10.0, kill: bool = True) -> None:
    """Stop the process group ``proc`` leads (it was started with :data:`OWN_PROCESS_GROUP`).

    Sends ``sig`` to the group, waits up to ``grace`` seconds for the leader, then (if
    ``kill``) SIGKILLs the group. Idempotent; only this process's own group is signalled.
    """
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        if not kill:
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def kill_group(pgid: int, run_id: str, run_dir: Path | str,
               sig: int = signal.SIGKILL) -> bool:
    """Signal a process group of ours; True if anything of it was still there."""
    members = [p for p in _pids_in_group(pgid) if belongs_to_run(p, run_id, run_dir)]
    if not members:
        return False
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


@dataclass(frozen=True)
class InstanceDirs:
    """The directories of one instance in the run directory."""

    #: the instance's own directory (its log)
    base: Path
    #: rendered configuration files (mounted at /agentverify/conf in a container)
    conf: Path
    #: persistent data (survives a restart or a new generation when the spec says so)
    data: Path


@dataclass
class RunContext:
    """One run: its id, directory and the record of what it started."""

    run_id: str
    state_dir: Path
    backend: str
    env_name: str = ""
    _processes: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, backend: str, *, env_name: str = "", state_dir: Path | None = None,
               run_id: str | None = None) -> RunContext:
        state_dir = state_dir or default_state_dir()
        rid = run_id or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        ctx = cls(run_id=rid, state_dir=state_dir, backend=backend, env_name=env_name)
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        ctx._write(closed=False)
        return ctx

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "runs" / self.run_id

    def service_dir(self, instance: str) -> Path:
        d = self.run_dir / "services" / instance
        d.mkdir(parents=True, exist_ok=True)
        return d

    def instance_dirs(self, instance: str, generation: int, persistent: bool) -> InstanceDirs:
        """The log, rendered files and data directories of one instance.

        Persistent data survives a restart or a new generation of the same instance.
        """
        base = self.service_dir(f"{instance}.g{generation}")
        data = self.service_dir(instance) / "data" if persistent else base / "data"
        dirs = InstanceDirs(base=base, conf=base / "conf", data=data)
        for d in (dirs.base, dirs.conf, dirs.data):
            d.mkdir(parents=True, exist_ok=True)
        return dirs

    @property
    def labels(self) -> dict[str, str]:
        return {"agentverify": "1", "agentverify.run": self.run_id,
                "agentverify.owner-pid": str(os.getpid()),
                "agentverify.owner-start": _proc_start_time(os.getpid()) or ""}

    def record_process(self, key: str, pid: int, pgid: int) -> None:
        with self._lock:
            self._processes[key] = {"pid": pid, "pgid": pgid, "started": time.time()}
            self._write(closed=False)

    def processes(self) -> dict[str, dict[str, Any]]:
        """The processes recorded and not forgotten: ``{key: {"pid", "pgid", "started"}}``."""
        with self._lock:
            return {k: dict(v) for k, v in self._processes.items()}

    def forget_process(self, key: str) -> None:
        with self._lock:
            self._processes.pop(key, None)
            self._write(closed=False)

    def close(self) -> None:
        with self._lock:
            self._write(closed=True)
        prune_finished_runs(self.state_dir, keep=KEEP_FINISHED_RUNS, current=self.run_id)

    def _write(self, *, closed: bool) -> None:  # the record, atomically
        record = {
            "run_id": self.run_id,
            "backend": self.backend,
            "env": self.env_name,
            "owner_pid": os.getpid(),
            "owner_start": _proc_start_time(os.getpid()),
            "closed": closed,
            "processes": self._processes,
        }
        tmp = self.run_dir / "run.json.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, self.run_dir / "run.json")


def _records(state_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    runs = state_dir / "runs"
    if not runs.is_dir():
        return
    for d in sorted(runs.iterdir()):
        f = d / "run.json"
        try:
            yield d, json.loads(f.read_text())
        except (OSError, ValueError):
            continue


def reap_stale_runs(state_dir: Path | None = None) -> list[str]:
    """Kill the processes of runs whose owner is gone; return what was reaped."""
    state_dir = state_dir or default_state_dir()
    reaped: list[str] = []
    for d, rec in _records(state_dir):
        if rec.get("closed") or owner_alive(int(rec.get("owner_pid", 0)),
                                                rec.get("owner_start")):
            continue
        run_id = rec["run_id"]
        for key, proc in (rec.get("processes") or {}).items():
            pgid = int(proc["pgid"])
            if kill_group(pgid, run_id, d, signal.SIGKILL):
                reaped.append(f"{run_id}/{key} (process group {pgid})")
        rec["closed"] = True
        rec["reaped"] = time.time()
        try:
            (d / "run.json").write_text(json.dumps(rec, indent=1))
        except OSError:
            pass
    return reaped


def prune_finished_runs(state_dir: Path, *, keep: int, current: str | None = None) -> None:
    """Delete the directories of closed runs beyond the ``keep`` newest."""
    closed = [d for d, rec in _records(state_dir) if rec.get("closed") and d.name != current]
    for d in closed[:-keep] if keep else closed:
        shutil.rmtree(d, ignore_errors=True)
