"""The one backend interface and the registry of backends by name.

A backend runs :class:`~agentverify.stack.spec.ServiceSpec` instances and knows nothing
of scenarios. Backends are resolved by name through importlib, so the local backend
works where docker (the library) is not installed.

Example:
    >>> backend = get_backend("local")            # doctest: +SKIP
    >>> handle = backend.start(spec, "redis", peers={})
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from agentverify.errors import ConfigError, StackError

if TYPE_CHECKING:
    from agentverify.stack.runstate import InstanceDirs, RunContext
    from agentverify.stack.spec import ServiceSpec
    from agentverify.stack.wait import ServiceStatus

__all__ = ["Backend", "BACKENDS", "CommandResult", "Handle", "InstanceState", "Peer",
           "get_backend", "backend_names", "peer_lookup", "register_backend",
           "resolve_backend_name"]

BACKENDS: dict[str, str] = {
    "local": "agentverify.stack.local.LocalBackend",
    "docker": "agentverify.stack.docker.DockerBackend",
}


@dataclass(frozen=True)
class CommandResult:
    """The outcome of a command run in a service's context (exec) or of a job."""

    argv: tuple[str, ...]
    exit_code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def __repr__(self) -> str:
        tail = self.output.strip().splitlines()[-1:] or [""]
        return f"CommandResult(exit_code={self.exit_code}, argv={self.argv[0]!r}, last={tail[0]!r})"


@dataclass(eq=False)
class InstanceState:
    """What every backend keeps about an instance it started: where its files are, the
    peers its placeholders were rendered against, and its log. Backends subclass it
    (``LocalState``, ``DockerState``) for what only they know."""

    dirs: InstanceDirs
    peers: dict[str, Peer]
    log: Path


@dataclass(eq=False)
class Handle:
    """One running instance of a service (a process or a container).

    Satisfies :class:`~agentverify.stack.wait.ServiceTarget`, so readiness checks,
    probes and fault injectors work on every backend. ``state`` is the backend's own
    typed record of the instance (only that backend reads it).
    """

    spec: ServiceSpec
    instance: str
    generation: int
    backend: Backend
    state: Any = None
    started_at: float = 0.0
    ready_at: float | None = None
    #: seconds from start to ready (set by the Stack when the readiness check passed)
    ready_seconds: float | None = None

    @property
    def name(self) -> str:
        return self.instance if self.generation <= 1 else f"{self.instance}.g{self.generation}"

    @property
    def key(self) -> str:
        return f"{self.instance}.g{self.generation}"

    def endpoint(self, port: str | None = None) -> tuple[str, int]:
        return self.backend.endpoint(self, port or self.spec.port().name)

    def address(self, port: str | None = None) -> tuple[str, int]:
        return self.backend.address(self, port or self.spec.port().name)

    def url(self, port: str | None = None) -> str:
        p = self.spec.port(port)
        host, hport = self.endpoint(p.name)
        return f"{p.scheme}://{host}:{hport}"

    def status(self) -> ServiceStatus:
        return self.backend.status(self)

    def logs(self, tail: int = 50) -> str:
        return self.backend.logs(self, tail)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.spec.role} on {self.backend.name}>"


class Peer(Protocol):
    """What rendering another service's placeholders needs of a peer: how the other
    services reach it. A :class:`Handle` is one; so is a route through the fault proxy."""

    @property
    def spec(self) -> ServiceSpec: ...

    def address(self, port: str | None = None) -> tuple[str, int]: ...


@runtime_checkable
class Backend(Protocol):
    """How services run. Implementations: ``LocalBackend``, ``DockerBackend``."""

    name: str

    def pytest_id(self) -> str:
        """The id test items carry for this backend (``rolling-update[docker]``)."""

    def open(self, run: RunContext) -> None:
        """Prepare per-run resources (directories, a network). Called once per run."""

    def close(self) -> None:
        """Release per-run resources. Idempotent."""

    def start(self, spec: ServiceSpec, instance: str, *, peers: Mapping[str, Peer],
              generation: int = 1) -> Handle:
        """Start one instance; return at once (readiness is the caller's wait strategy)."""

    def run_job(self, spec: ServiceSpec, instance: str, *, peers: Mapping[str, Peer],
                timeout: float) -> CommandResult:
        """Run a one-shot job to completion."""

    def stop(self, handle: Handle, grace: float | None = None) -> None:
        """Graceful stop: the stop signal, then a kill after ``grace`` seconds. Idempotent."""

    def kill(self, handle: Handle) -> None:
        """Immediate kill (SIGKILL). Idempotent."""

    def signal(self, handle: Handle, sig: int) -> None:
        """Send ``sig`` (e.g. ``signal.SIGHUP``: reopen your log) to the instance's main
        process, the one its command started; nothing else of the instance gets it.

        Raises:
            StackError: the instance is not running.
        """

    def restart(self, handle: Handle, *, peers: Mapping[str, Peer]) -> Handle:
        """Stop and start again with the same ports and data."""

    def status(self, handle: Handle) -> ServiceStatus: ...

    def logs(self, handle: Handle, tail: int = 50) -> str: ...

    def exec(self, handle: Handle, argv: list[str], *, timeout: float = 30.0) -> CommandResult:
        """Run a command in the service's context (placeholders resolved)."""

    def endpoint(self, handle: Handle, port: str) -> tuple[str, int]:
        """(host, port) to reach the instance from this machine: always 127.0.0.1."""

    def address(self, handle: Handle, port: str) -> tuple[str, int]:
        """(host, port) by which the *other services* reach the instance."""

    def write_file(self, handle: Handle, relpath: str, content: str) -> None:
        """Write (atomically) a file into the instance's config directory."""

    def volume_path(self, handle: Handle) -> Path:
        """Host path of the instance's persistent data directory."""

    def reap_stale(self) -> list[str]:
        """Remove what killed runs of this backend left behind that run records do not
        cover (the Stack reaps recorded processes itself); return descriptions."""


def peer_lookup(who: str, peers: Mapping[str, Peer]):
    """``(service, port) -> (host, port, scheme)`` of a running peer as other services
    reach it: the ``lookup`` every backend gives :func:`~agentverify.stack.placeholders.make_resolver`."""

    def lookup(service: str, port: str | None) -> tuple[str, int, str]:
        if service not in peers:
            raise StackError(f"{who}: refers to service {service!r}, which is not running "
                             f"(known: {sorted(peers)})")
        target = peers[service]
        host, hport = target.address(port)
        return host, hport, target.spec.port(port).scheme

    return lookup


def backend_names() -> list[str]:
    """Every backend name the registry knows (``auto`` is not one: it picks one)."""
    return sorted(BACKENDS)


def register_backend(name: str, path: str) -> None:
    """Add a backend to the registry (``path``: ``"package.module.ClassName"``), so its
    name is valid in config and on the command line; a plugin's
    ``pytest_agentverify_make_backend`` may then construct it."""
    BACKENDS[name] = path


def resolve_backend_name(name: str) -> str:
    """``auto`` -> ``docker`` when a Docker engine answers, else ``local``."""
    if name != "auto":
        if name not in BACKENDS:
            raise ConfigError(f"unknown backend {name!r}; expected one of: auto, "
                              f"{', '.join(backend_names())}", key="stack.backend")
        return name
    try:
        docker_mod = importlib.import_module("agentverify.stack.docker")
    except ImportError:
        return "local"
    available = getattr(docker_mod, "engine_available", None)
    return "docker" if available is not None and available() else "local"


def get_backend(name: str, **options: object) -> Backend:
    """Instantiate a backend by registry name (``options``: e.g. ``config=Config``).

    Raises:
        ConfigError: the name is unknown (lists the valid ones).
    """
    name = resolve_backend_name(name)
    module_name, _, cls_name = BACKENDS[name].rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"backend {name!r} is not available here ({exc}); "
            f"install agentverify[{name}]", key="stack.backend") from None
    return getattr(module, cls_name)(**options)
