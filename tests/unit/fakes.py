"""In-memory fakes of the cross-backend Protocols, for unit tests of the Stack and the
runner (integration tests use real backends; these never start anything)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agentverify.stack.backend import CommandResult, Handle, InstanceState, Peer
from agentverify.stack.runstate import RunContext
from agentverify.stack.spec import ServiceSpec
from agentverify.stack.wait import ServiceStatus


@dataclass(eq=False)
class FakeState(InstanceState):
    ports: dict[str, int] = field(default_factory=dict)
    running: bool = True
    exit_code: int | None = None
    files: dict[str, str] = field(default_factory=dict)


class FakeBackend:
    """Every call is recorded in ``calls``; instances "run" until stopped or killed.

    ``fail_start`` names instances whose start raises, ``fail_stop`` instances whose
    stop raises (after the instance stopped, as a backend that lost track of it);
    ``on_stop`` is called with each handle being stopped; ``leftovers`` is what
    ``reap_stale`` reports.
    """

    name = "fake"

    def __init__(self, *, fail_start: set[str] | None = None,
                 fail_stop: set[str] | None = None,
                 on_stop: Callable[[Handle], None] | None = None,
                 leftovers: list[str] | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_start = fail_start or set()
        self.fail_stop = fail_stop or set()
        self.on_stop = on_stop
        self.leftovers = list(leftovers or [])
        self.run: RunContext | None = None
        self.closed = False
        self._ports = itertools.count(20000)

    def pytest_id(self) -> str:
        return "fake"

    def open(self, run: RunContext) -> None:
        self.run = run
        self.calls.append(("open", run.run_id))

    def close(self) -> None:
        self.closed = True
        self.calls.append(("close", ""))

    def reap_stale(self) -> list[str]:
        self.calls.append(("reap_stale", ""))
        return list(self.leftovers)

    def start(self, spec: ServiceSpec, instance: str, *, peers: Mapping[str, Peer],
              generation: int = 1) -> Handle:
        from agentverify.errors import ServiceStartError

        self.calls.append(("start", f"{instance}.g{generation}"))
        if instance in self.fail_start:
            raise ServiceStartError(f"{instance}: fake start failure")
        assert self.run is not None
        dirs = self.run.instance_dirs(instance, generation, spec.persistent)
        state = FakeState(dirs=dirs, peers=dict(peers), log=dirs.base / "log",
                          ports={p.name: next(self._ports) for p in spec.ports},
                          files=dict(spec.files))
        return Handle(spec=spec, instance=instance, generation=generation, backend=self,
                      state=state)

    def run_job(self, spec: ServiceSpec, instance: str, *, peers: Mapping[str, Peer],
                timeout: float) -> CommandResult:
        self.calls.append(("run_job", instance))
        return CommandResult(tuple(spec.command), 0, "job done")

    def stop(self, handle: Handle, grace: float | None = None) -> None:
        from agentverify.errors import StackError

        self.calls.append(("stop", handle.key))
        if self.on_stop is not None:
            self.on_stop(handle)
        handle.state.running = False
        if handle.instance in self.fail_stop:
            raise StackError(f"{handle.instance}: fake stop failure")
        handle.state.exit_code = 0

    def kill(self, handle: Handle) -> None:
        self.calls.append(("kill", handle.key))
        handle.state.running = False
        handle.state.exit_code = -9

    def signal(self, handle: Handle, sig: int) -> None:
        from agentverify.errors import StackError

        if not handle.state.running:
            raise StackError(f"{handle.name} is not running")
        self.calls.append(("signal", f"{handle.key}: {sig}"))

    def restart(self, handle: Handle, *, peers: Mapping[str, Peer]) -> Handle:
        self.calls.append(("restart", handle.key))
        self.stop(handle)
        new = self.start(handle.spec, handle.instance, peers=peers,
                         generation=handle.generation)
        new.state.ports = dict(handle.state.ports)
        return new

    def status(self, handle: Handle) -> ServiceStatus:
        return ServiceStatus(handle.state.running, handle.state.exit_code)

    def logs(self, handle: Handle, tail: int = 50) -> str:
        return f"log of {handle.name}"

    def exec(self, handle: Handle, argv: list[str], *, timeout: float = 30.0) -> CommandResult:
        self.calls.append(("exec", f"{handle.name}: {' '.join(argv)}"))
        return CommandResult(tuple(argv), 0, "")

    def endpoint(self, handle: Handle, port: str) -> tuple[str, int]:
        return "127.0.0.1", handle.state.ports[port]

    def address(self, handle: Handle, port: str) -> tuple[str, int]:
        return f"{handle.instance}-g{handle.generation}", handle.spec.port(port).port

    def write_file(self, handle: Handle, relpath: str, content: str) -> None:
        self.calls.append(("write_file", f"{handle.name}/{relpath}"))
        handle.state.files[relpath] = content

    def volume_path(self, handle: Handle) -> Path:
        return handle.state.dirs.data

    # -- helpers for assertions
    def started(self) -> list[str]:
        return [who for what, who in self.calls if what == "start"]

    def stopped(self) -> list[str]:
        return [who for what, who in self.calls if what in ("stop", "kill")]
