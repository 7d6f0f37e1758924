"""The local backend: every service is a real process on this machine.

Each instance runs in its own process group (``start_new_session``), with its output in
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
from pathlib import Path

from agentverify.errors import BackendUnavailable, ServiceStartError, StackError
from agentverify.stack.backend import CommandResult, Handle, peer_lookup
from agentverify.stack.host import free_port, tail_file, write_atomic
from agentverify.stack.placeholders import Resolver, make_resolver, render_template
from agentverify.stack.runstate import (
    RUN_ID_ENV,
    RunContext,
    kill_group,
    reap_stale_runs,
    terminate_group,
)
from agentverify.stack.spec import ServiceSpec
from agentverify.stack.wait import ServiceStatus

__all__ = ["LocalBackend"]

BIND = "127.0.0.1"


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
        """Nothing per-run to release: processes are stopped through their handles."""

    @classmethod
    def reap_stale(cls) -> list[str]:
        return reap_stale_runs()

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

    def _resolver(self, handle: Handle, peers: Mapping[str, Handle]) -> Resolver:
        dirs: dict[str, Path] = handle.extra["dirs"]  # type: ignore[assignment]
        return make_resolver(who=handle.name, ports=handle.extra["ports"],  # type: ignore[arg-type]
                             bind=BIND, confdir=str(dirs["conf"]), datadir=str(dirs["data"]),
                             python=sys.executable, user=getpass.getuser(),
                             lookup=peer_lookup(handle.name, peers))

    def _render(self, handle: Handle, peers: Mapping[str, Handle], text: str) -> str:
        return render_template(text, self._resolver(handle, peers))

    def _prepare(self, spec: ServiceSpec, instance: str, generation: int,
                 peers: Mapping[str, Handle], ports: dict[str, int] | None = None) -> Handle:
        self._check_binaries(spec)
        handle = Handle(spec=spec, instance=instance, generation=generation, backend=self)
        handle.extra["ports"] = ports or {p.name: self._alloc_port() for p in spec.ports}
        run = self._require_run()
        handle.extra["dirs"] = run.instance_dirs(instance, generation, spec.persistent)
        handle.extra["peers"] = dict(peers)
        if ports is not None:
            # a restart: keep the files as they are now (e.g. nginx's current upstream)
            return handle
        for relpath, content in spec.files.items():
            write_atomic(handle.extra["dirs"]["conf"] / relpath,  # type: ignore[index]
                        self._render(handle, peers, content))
        return handle

    def _env(self, handle: Handle, peers: Mapping[str, Handle]) -> dict[str, str]:
        run = self._require_run()
        env = dict(os.environ)
        env.update({k: self._render(handle, peers, v) for k, v in handle.spec.env.items()})
        env.update({RUN_ID_ENV: run.run_id, "AGENTVERIFY_INSTANCE": handle.name,
                    "PYTHONUNBUFFERED": "1"})
        return env

    def _argv(self, handle: Handle, peers: Mapping[str, Handle]) -> list[str]:
        return [self._render(handle, peers, a) for a in handle.spec.command]

    # ----------------------------------------------------------------- services

    def start(self, spec: ServiceSpec, instance: str, *, peers: Mapping[str, Handle],
              generation: int = 1, _ports: dict[str, int] | None = None) -> Handle:
        run = self._require_run()
        handle = self._prepare(spec, instance, generation, peers, _ports)
        argv = self._argv(handle, peers)
        log_path = handle.extra["dirs"]["base"] / "log"  # type: ignore[index]
        handle.extra["log"] = log_path
        with open(log_path, "ab") as log:
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=self._env(handle, peers), cwd=handle.extra["dirs"]["base"],
                    start_new_session=True, close_fds=True)
            except OSError as exc:
                raise ServiceStartError(
                    f"{handle.name}: cannot run {argv[0]!r}: {exc.strerror}") from exc
        handle.extra["proc"] = proc
        handle.started_at = time.monotonic()
        run.record_process(handle.key, proc.pid, proc.pid)
        return handle

    def run_job(self, spec: ServiceSpec, instance: str, *, peers: Mapping[str, Handle],
                timeout: float) -> CommandResult:
        handle = self.start(spec, instance, peers=peers)
        proc: subprocess.Popen = handle.extra["proc"]  # type: ignore[assignment]
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(handle)
            return CommandResult(tuple(spec.command), -1,
                                 tail_file(handle.extra["log"], 50)  # type: ignore[arg-type]
                                 + f"\n[agentverify] job timed out after {timeout:.0f}s")
        finally:
            self._require_run().forget_process(handle.key)
        return CommandResult(tuple(spec.command), code,
                             tail_file(handle.extra["log"], 200))  # type: ignore[arg-type]

    def stop(self, handle: Handle, grace: float | None = None) -> None:
        proc: subprocess.Popen | None = handle.extra.get("proc")  # type: ignore[assignment]
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

    def restart(self, handle: Handle, *, peers: Mapping[str, Handle]) -> Handle:
        self.stop(handle)
        return self.start(handle.spec, handle.instance, peers=peers,
                          generation=handle.generation,
                          _ports=dict(handle.extra["ports"]))  # type: ignore[arg-type]

    def status(self, handle: Handle) -> ServiceStatus:
        proc: subprocess.Popen | None = handle.extra.get("proc")  # type: ignore[assignment]
        if proc is None:
            return ServiceStatus(False, None, "never started")
        code = proc.poll()
        return ServiceStatus(code is None, code)

    def logs(self, handle: Handle, tail: int = 50) -> str:
        log = handle.extra.get("log")
        return tail_file(log, tail) if isinstance(log, Path) else ""

    def exec(self, handle: Handle, argv: list[str], *, timeout: float = 30.0) -> CommandResult:
        peers: Mapping[str, Handle] = handle.extra.get("peers", {})  # type: ignore[assignment]
        rendered = [self._render(handle, peers, a) for a in argv]
        try:
            res = subprocess.run(rendered, stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True, timeout=timeout, env=self._env(handle, peers),
                                 cwd=handle.extra["dirs"]["base"])  # type: ignore[index]
        except subprocess.TimeoutExpired:
            return CommandResult(tuple(rendered), -1, f"timed out after {timeout}s")
        except OSError as exc:
            return CommandResult(tuple(rendered), 127, f"cannot run: {exc.strerror}")
        return CommandResult(tuple(rendered), res.returncode, res.stdout + res.stderr)

    def endpoint(self, handle: Handle, port: str) -> tuple[str, int]:
        ports: dict[str, int] = handle.extra["ports"]  # type: ignore[assignment]
        if port not in ports:
            raise StackError(f"{handle.name} has no port {port!r} (has {sorted(ports)})")
        return BIND, ports[port]

    def address(self, handle: Handle, port: str) -> tuple[str, int]:
        return self.endpoint(handle, port)

    def write_file(self, handle: Handle, relpath: str, content: str) -> None:
        peers: Mapping[str, Handle] = handle.extra.get("peers", {})  # type: ignore[assignment]
        write_atomic(handle.extra["dirs"]["conf"] / relpath,  # type: ignore[index]
                    self._render(handle, peers, content))

    def volume_path(self, handle: Handle) -> Path:
        return handle.extra["dirs"]["data"]  # type: ignore[return-value]
