"""The local backend: every service is a real process on this machine.

Each instance runs in its own process group (in the caller's session: see
:data:`~agentverify.stack.runstate.OWN_PROCESS_GROUP`), with its output in
``<run_dir>/services/<instance>/log``, its rendered files in ``conf/`` and its data in
``data/``. Ports are allocated on 127.0.0.1 at start. Teardown signals the whole process
group (nginx workers, uvicorn children) and kills it after a grace period; every
process group is recorded in the run record so a later run can reap it if this one is
killed (see :mod:`agentverify.stack.runstate`).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agentverify.errors import BackendUnavailable, ServiceStartError, StackError
from agentverify.stack.backend import CommandResult, Handle, InstanceState, Peer, peer_lookup
from agentverify.stack.host import free_port, tail_file, write_atomic
from agentverify.stack.placeholders import Resolver, make_resolver, render_template
from agentverify.stack.runstate import (
    OWN_PROCESS_GROUP,
    RUN_ID_ENV,
    RunContext,
    kill_group,
    terminate_group,
)
from agentverify.stack.spec import ServiceSpec
from agentverify.stack.wait import ServiceStatus

__all__ = ["LocalBackend", "LocalState"]

BIND = "127.0.0.1"


@dataclass(eq=False)
class LocalState(InstanceState):
    """What the local backend keeps about an instance: its ports and its process."""

    ports: dict[str, int] | None = None
    proc: subprocess.Popen[bytes] | None = None


def _state(handle: Handle) -> LocalState:
    state = handle.state
    if not isinstance(state, LocalState):
        raise StackError(f"{handle.name} was not started by the local backend")
    return state


class LocalBackend:
    """Runs services as processes on 127.0.0.1."""

    name = "local"

    def __init__(self, config: object | None = None) -> None:
        self.config = config
        self.run: RunContext | None = None
        self._lock = threading.Lock()
        self._used_ports: set[int] = set()

    # ----------------------------------------------------------------- lifecycle

    def open(self, run: RunContext) -> None:
        self.run = run

    def close(self) -> None:
        """Stop what the run record still lists once the stack has stopped its handles:
        a process whose start a Ctrl-C cut short (spawned and recorded, its handle never
        returned to the stack) would otherwise outlive the run."""
        run = self.run
        if run is None:
            return
        for key, entry in run.processes().items():
            kill_group(int(entry["pgid"]), run.run_id, run.run_dir, signal.SIGKILL)
            run.forget_process(key)

    def reap_stale(self) -> list[str]:
        """Nothing beyond the run records (which the Stack reaps): a process is ours only
        through its record."""
        return []

    def pytest_id(self) -> str:
        return self.name

    # ------------------------------------------------------------------- helpers

    def _require_run(self) -> RunContext:
        if self.run is None:
            raise StackError("LocalBackend used before open(run)")
        return self.run

    def _alloc_port(self) -> int:
        with self._lock:
            for _ in range(50):
                port = free_port()
                if port not in self._used_ports:
                    self._used_ports.add(port)
                    return port
        raise StackError("could not find a free port on 127.0.0.1")

    @staticmethod
    def _check_binaries(spec: ServiceSpec) -> None:
        for binary, package in spec.requires.items():
            if shutil.which(binary) is None:
                raise BackendUnavailable(
                    f"{spec.name} needs `{binary}`, which is not on PATH: "
                    f"install it with `apt-get install {package}`")

    def _resolver(self, handle: Handle, peers: Mapping[str, Peer]) -> Resolver:
        st = _state(handle)
        return make_resolver(who=handle.name, ports=st.ports or {},
                             bind=BIND, confdir=str(st.dirs.conf), datadir=str(st.dirs.data),
                             python=sys.executable, user=getpass.getuser(),
                             lookup=peer_lookup(handle.name, peers))

    def _render(self, handle: Handle, peers: Mapping[str, Peer], text: str) -> str:
        return render_template(text, self._resolver(handle, peers))

    def _prepare(self, spec: ServiceSpec, instance: str, generation: int,
                 peers: Mapping[str, Peer], ports: dict[str, int] | None = None) -> Handle:
        self._check_binaries(spec)
        run = self._require_run()
        dirs = run.instance_dirs(instance, generation, spec.persistent)
        state = LocalState(dirs=dirs, peers=dict(peers), log=dirs.base / "log",
                           ports=ports or {p.name: self._alloc_port() for p in spec.ports})
        handle = Handle(spec=spec, instance=instance, generation=generation, backend=self,
                        state=state)
        if ports is not None:
            # a restart: keep the files as they are now (e.g. nginx's current upstream)
            return handle
        for relpath, content in spec.files.items():
            write_atomic(dirs.conf / relpath, self._render(handle, peers, content))
        return handle

    def _env(self, handle: Handle, peers: Mapping[str, Peer]) -> dict[str, str]:
        run = self._require_run()
        env = dict(os.environ)
        env.update({k: self._render(handle, peers, v) for k, v in handle.spec.env.items()})
        env.update({RUN_ID_ENV: run.run_id, "AGENTVERIFY_INSTANCE": handle.name,
                    "PYTHONUNBUFFERED": "1"})
        return env

    def _argv(self, handle: Handle, peers: Mapping[str, Peer]) -> list[str]:
        return [self._render(handle, peers, a) for a in handle.spec.command]

    # ----------------------------------------------------------------- services

    def start(self, spec: ServiceSpec, instance: str, *, peers: Mapping[str, Peer],
              generation: int = 1, _ports: dict[str, int] | None = None) -> Handle:
        run = self._require_run()
        handle = self._prepare(spec, instance, generation, peers, _ports)
        st = _state(handle)
        argv = self._argv(handle, peers)
        with open(st.log, "ab") as log:
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=self._env(handle, peers), cwd=st.dirs.base,
                    close_fds=True, **OWN_PROCESS_GROUP)
            except OSError as exc:
                raise ServiceStartError(
                    f"{handle.name}: cannot run {argv[0]!r}: {exc.strerror}") from exc
        st.proc = proc
        handle.started_at = time.monotonic()
        run.record_process(handle.key, proc.pid, proc.pid)
        return handle

    def run_job(self, spec: ServiceSpec, instance: str, *, peers: Mapping[str, Peer],
                timeout: float) -> CommandResult:
        handle = self.start(spec, instance, peers=peers)
        st = _state(handle)
        assert st.proc is not None
        try:
            code = st.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(handle)
            return CommandResult(tuple(spec.command), -1, tail_file(st.log, 50)
                                 + f"\n[agentverify] job timed out after {timeout:.0f}s")
        finally:
            self._require_run().forget_process(handle.key)
        return CommandResult(tuple(spec.command), code, tail_file(st.log, 200))

    def stop(self, handle: Handle, grace: float | None = None) -> None:
        proc = _state(handle).proc
        if proc is None:
            return
        grace = handle.spec.stop_grace if grace is None else grace
        run = self._require_run()
        terminate_group(proc, grace=grace, kill=False)
        # the leader may be gone while children of its group live on (nginx workers)
        kill_group(proc.pid, run.run_id, run.run_dir, signal.SIGKILL)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            raise StackError(f"{handle.name} (pid {proc.pid}) did not exit after SIGKILL") \
                from None
        self._wait_group_gone(proc.pid, run)
        run.forget_process(handle.key)

    @staticmethod
    def _wait_group_gone(pgid: int, run: RunContext, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while kill_group(pgid, run.run_id, run.run_dir, 0) and time.monotonic() < deadline:
            time.sleep(0.02)

    def kill(self, handle: Handle) -> None:
        self.stop(handle, grace=0)

    def signal(self, handle: Handle, sig: int) -> None:
        """``sig`` to the process the command started (the group leader), not the group:
        a daemon's children (uvicorn's workers, nginx's) are its business, and a signal
        such as SIGHUP would end any child that does not handle it. The docker backend
        does the same (docker's init hands the signal to the command's process only)."""
        proc = _state(handle).proc
        # poll(): a child not yet waited for keeps its pid, so the pid is still this one
        if proc is None or proc.poll() is not None:
            raise StackError(f"{handle.name} is not running: cannot send it "
                             f"{signal.Signals(sig).name}")
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            raise StackError(f"{handle.name} (pid {proc.pid}) is gone: cannot send it "
                             f"{signal.Signals(sig).name}") from None

    def restart(self, handle: Handle, *, peers: Mapping[str, Peer]) -> Handle:
        self.stop(handle)
        return self.start(handle.spec, handle.instance, peers=peers,
                          generation=handle.generation, _ports=dict(_state(handle).ports or {}))

    def status(self, handle: Handle) -> ServiceStatus:
        proc = _state(handle).proc
        if proc is None:
            return ServiceStatus(False, None, "never started")
        code = proc.poll()
        return ServiceStatus(code is None, code)

    def logs(self, handle: Handle, tail: int = 50) -> str:
        return tail_file(_state(handle).log, tail)

    def exec(self, handle: Handle, argv: list[str], *, timeout: float = 30.0) -> CommandResult:
        st = _state(handle)
        rendered = [self._render(handle, st.peers, a) for a in argv]
        try:
            res = subprocess.run(rendered, stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True, timeout=timeout, env=self._env(handle, st.peers),
                                 cwd=st.dirs.base)
        except subprocess.TimeoutExpired:
            return CommandResult(tuple(rendered), -1, f"timed out after {timeout}s")
        except OSError as exc:
            return CommandResult(tuple(rendered), 127, f"cannot run: {exc.strerror}")
        return CommandResult(tuple(rendered), res.returncode, res.stdout + res.stderr)

    def endpoint(self, handle: Handle, port: str) -> tuple[str, int]:
        ports = _state(handle).ports or {}
        if port not in ports:
            raise StackError(f"{handle.name} has no port {port!r} (has {sorted(ports)})")
        return BIND, ports[port]

    def address(self, handle: Handle, port: str) -> tuple[str, int]:
        return self.endpoint(handle, port)

    def write_file(self, handle: Handle, relpath: str, content: str) -> None:
        st = _state(handle)
        write_atomic(st.dirs.conf / relpath, self._render(handle, st.peers, content))

    def volume_path(self, handle: Handle) -> Path:
        return _state(handle).dirs.data
