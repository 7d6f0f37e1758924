"""The docker backend: every service is a container on one bridge network per run.

Containers are created through testcontainers-python (``DockerContainer``, with Ryuk
disabled: agentverify reaps by label itself) and managed through the docker SDK for what
testcontainers does not do (networks, exec, label filters, inspect). Both libraries are
imported lazily, so the local backend works where they are not installed.

Per run::

    network    agentverify-<run_id>                        labels: run.labels
    container  av-<run_id>-<instance>-g<generation>        labels: run.labels +
               aliases: <service> (first instance of a         agentverify.service,
               non-replicated service), <instance>-g<gen>      agentverify.instance,
                                                               agentverify.generation

Ports are published on 127.0.0.1 only, on random host ports; other services reach an
instance by its network alias and container port. Rendered files are written on the
host into ``<run_dir>/services/<instance>.g<gen>/conf`` and that *directory* is
bind-mounted at ``/agentverify/conf`` (an atomic rename on the host is seen inside,
which a single-file mount would not see); the data directory is a host directory
mounted at ``/agentverify/data``, so :meth:`DockerBackend.volume_path` is a real path.

Resource limits come from the spec: ``cpus`` -> ``NanoCpus`` (CFS quota), ``memory`` ->
``Memory``, ``memory_reservation`` -> ``MemoryReservation`` (a soft limit), and
``cpu_reservation`` -> ``CpuShares`` = 1024 x cpus. Docker has no CPU *reservation* for a
plain container; shares are the relative weight the kernel honours under contention,
with 1024 being docker's default for one container, so a reservation of 0.5 CPU weighs
half of an unconstrained container under contention and costs nothing when idle.

Services run as root inside their containers (``${user}``), so what they write into
the data directory belongs to root on the host. Besides ``run.labels`` every resource
carries ``agentverify.owner-boot`` and ``agentverify.owner-pidns``: :meth:`reap_stale`
judges an owner pid only on the boot and in the pid namespace it came from.

Example:
    >>> backend = DockerBackend(config)                            # doctest: +SKIP
    >>> backend.open(run)                                          # doctest: +SKIP
    >>> handle = backend.start(spec["redis"], "redis", peers={})   # doctest: +SKIP
    >>> handle.endpoint("redis")                                   # doctest: +SKIP
    ('127.0.0.1', 32771)
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentverify.errors import (
    AgentVerifyError,
    BackendUnavailable,
    ServiceStartError,
    StackError,
)
from agentverify.stack.backend import CommandResult, Handle, InstanceState, Peer, peer_lookup
from agentverify.stack.host import tail_file, write_atomic
from agentverify.stack.placeholders import (
    CONF_DIR,
    DATA_DIR,
    Resolver,
    container_resolver,
    render_template,
)
from agentverify.stack.runstate import RUN_ID_ENV, RunContext, owner_alive
from agentverify.stack.spec import ROLE_AGENT, ServiceSpec
from agentverify.stack.wait import ServiceStatus

if TYPE_CHECKING:
    import docker

__all__ = [
    "DockerBackend",
    "DockerState",
    "aliases_for",
    "container_name",
    "cpu_shares",
    "engine_available",
    "memory_bytes",
    "nano_cpus",
    "resource_kwargs",
]

BIND = "127.0.0.1"          # where ports are published on the host
LABEL = "agentverify"
ENGINE_DOWN = "the Docker engine does not answer: start dockerd (scripts/bootstrap does it)"
#: docker's default CPU weight of one container (``docker run --cpu-shares``)
DEFAULT_CPU_SHARES = 1024



# ------------------------------------------------------------------ pure helpers


def container_name(run_id: str, instance: str, generation: int) -> str:
    """``av-<run_id>-<instance>-g<generation>``: unique per run, instance and generation."""
    return f"av-{run_id}-{instance}-g{generation}"


def aliases_for(spec: ServiceSpec, instance: str, generation: int) -> list[str]:
    """Network aliases: the service name for the instance of a non-replicated service,
    and ``<instance>-g<generation>`` for every instance (agent replicas go by that)."""
    unique = f"{instance}-g{generation}"
    if spec.role != ROLE_AGENT and spec.replicas == 1 and instance == spec.name:
        return [spec.name, unique]
    return [unique]


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGkmg]?)[Bb]?$")
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def memory_bytes(size: str | int) -> int:
    """``"2G"`` -> 2147483648 (binary units, as docker reads ``--memory``)."""
    if isinstance(size, int):
        return size
    m = _SIZE.match(str(size).strip())
    if not m:
        raise StackError(f"cannot read memory size {size!r}: expected e.g. '512M' or '2G'")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def nano_cpus(cpus: float) -> int:
    """CPU limit in units of 1e-9 CPUs (``docker run --cpus``)."""
    return int(round(cpus * 1e9))


def cpu_shares(reserved_cpus: float) -> int:
    """A CPU reservation as a relative weight: 1024 per CPU (docker's minimum is 2)."""
    return max(2, int(round(reserved_cpus * DEFAULT_CPU_SHARES)))


def resource_kwargs(spec: ServiceSpec) -> dict[str, int]:
    """The docker SDK ``create`` keywords for the spec's limits and reservations."""
    out: dict[str, int] = {}
    if spec.cpus is not None:
        out["nano_cpus"] = nano_cpus(spec.cpus)
    if spec.memory is not None:
        out["mem_limit"] = memory_bytes(spec.memory)
    if spec.memory_reservation is not None:
        out["mem_reservation"] = memory_bytes(spec.memory_reservation)
    if spec.cpu_reservation is not None:
        out["cpu_shares"] = cpu_shares(spec.cpu_reservation)
    return out


def _owner_identity() -> dict[str, str]:
    """Labels that tell whether a run's owner pid can be judged from this process:
    a pid means nothing on another boot or in another pid namespace."""
    ident = {}
    with contextlib.suppress(OSError):
        ident["agentverify.owner-boot"] = Path(
            "/proc/sys/kernel/random/boot_id").read_text().strip()
    with contextlib.suppress(OSError):
        ident["agentverify.owner-pidns"] = os.readlink("/proc/self/ns/pid")
    return ident


def _say(line: str) -> None:
    print(f"agentverify: {line}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the engine


_ENGINE_CACHE: dict[int, bool] = {}


def engine_available(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers a ping (cached per process; never raises)."""
    pid = os.getpid()
    if pid not in _ENGINE_CACHE:
        try:
            import docker as docker_sdk
        except ImportError:
            _ENGINE_CACHE[pid] = False
            return False
        client = None
        try:
            client = docker_sdk.from_env(timeout=timeout)
            _ENGINE_CACHE[pid] = bool(client.ping())
        except Exception:  # the SDK raises DockerException, requests and OS errors
            _ENGINE_CACHE[pid] = False
        finally:
            if client is not None:
                client.close()
    return _ENGINE_CACHE[pid]


def _connect(timeout: float = 120.0) -> docker.DockerClient:
    """A docker SDK client, or BackendUnavailable when there is no library or engine."""
    try:
        import docker as docker_sdk
    except ImportError as exc:
        raise BackendUnavailable("the docker backend needs the docker library: "
                                 "pip install 'agentverify[docker]'") from exc
    with _docker_errors("connecting to the Docker engine"):
        client = docker_sdk.from_env(timeout=timeout, max_pool_size=32)
        client.ping()
    return client


def _engine_down(exc: BaseException) -> bool:
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.exceptions.Timeout):
            return False
        if isinstance(seen, (requests.exceptions.ConnectionError, ConnectionError,
                             FileNotFoundError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return "Error while fetching server API version" in str(exc)


@contextlib.contextmanager
def _docker_errors(what: str, *, error: type[StackError] = StackError,
                   logs: Callable[[], str] | None = None) -> Iterator[None]:
    """The one place docker and requests errors become agentverify errors."""
    import docker.errors
    import requests

    try:
        yield
    except AgentVerifyError:
        raise
    except docker.errors.ImageNotFound as exc:
        raise BackendUnavailable(f"{what}: image not found: {exc.explanation}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException,
            OSError) as exc:
        if _engine_down(exc):
            raise BackendUnavailable(ENGINE_DOWN) from exc
        detail = getattr(exc, "explanation", None) or str(exc)
        msg = f"{what}: {detail}"
        if logs is not None:
            with contextlib.suppress(Exception):
                tail = logs().strip()
                if tail:
                    msg += f"\n--- last log lines ---\n{tail}"
        raise error(msg) from exc


# ------------------------------------------------------------------ the backend


@dataclass(eq=False)
class DockerState(InstanceState):
    """What the docker backend keeps about an instance: its container and network names."""

    name: str = ""
    alias: str = ""
    aliases: list[str] = field(default_factory=list)
    image_id: str = ""
    container_id: str = ""
    host_ports: dict[str, int] = field(default_factory=dict)
    #: the container's address on the run's network (agent replicas are routed by it)
    ip: str = ""
    #: the exit status, kept when the container is removed
    exit_code: int | None = None


def _state(handle: Handle) -> DockerState:
    state = handle.state
    if not isinstance(state, DockerState):
        raise StackError(f"{handle.name} was not started by the docker backend")
    return state


class DockerBackend:
    """Runs services as containers on a per-run bridge network.

    Args:
        config: the resolved :class:`~agentverify.config.Config` (``stack.pull`` and
            ``stack.images`` are read); None uses defaults (never pull).
        progress: receives one line per image pull step.
    """

    name = "docker"

    def __init__(self, config: Any | None = None, *,
                 progress: Callable[[str], None] | None = None) -> None:
        self.config = config
        stack_cfg = getattr(config, "stack", None)
        self.pull = bool(getattr(stack_cfg, "pull", False))
        self.progress = progress or _say
        self.run: RunContext | None = None
        self._client: docker.DockerClient | None = None
        self._network: Any = None
        self._lock = threading.Lock()
        #: image name -> id, pinned at first use: a rebuild that moves a tag mid-run must
        #: not give one stack containers of two different images
        self._image_ids: dict[str, str] = {}
        #: set by close(): a start racing with teardown removes what it just made
        self._closed = threading.Event()

    def pytest_id(self) -> str:
        return self.name

    def __repr__(self) -> str:
        run = self.run.run_id if self.run else None
        return f"<DockerBackend run={run} pull={self.pull}>"

    # ----------------------------------------------------------------- lifecycle

    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                self._client = _connect()
            return self._client

    @property
    def network_name(self) -> str:
        return f"agentverify-{self._require_run().run_id}"

    def _require_run(self) -> RunContext:
        if self.run is None:
            raise StackError("DockerBackend used before open(run)")
        return self.run

    def _labels(self, **extra: str) -> dict[str, str]:
        return {**self._require_run().labels, **_owner_identity(), **extra}

    def open(self, run: RunContext) -> None:
        """Create the run's bridge network ``agentverify-<run_id>``."""
        self.run = run
        self._closed.clear()
        with _docker_errors(f"creating network {self.network_name}"):
            self._network = self.client.networks.create(
                self.network_name, driver="bridge", labels=self._labels())

    def close(self) -> None:
        """Remove whatever of this run is left (containers, then the network). Idempotent."""
        self._closed.set()
        if self.run is None or self._client is None:
            return
        import docker.errors

        run_filter = {"label": f"agentverify.run={self.run.run_id}"}
        with _docker_errors(f"removing the containers of run {self.run.run_id}"):
            for c in self.client.containers.list(all=True, filters=run_filter):
                with contextlib.suppress(docker.errors.NotFound):
                    c.remove(force=True)
            for net in self.client.networks.list(filters=run_filter):
                with contextlib.suppress(docker.errors.NotFound):
                    net.remove()
        self._network = None
        with self._lock:
            client, self._client = self._client, None
        client.close()

    def reap_stale(self) -> list[str]:
        """Remove containers and networks of runs whose owner process is gone.

        A run is judged only from the boot and pid namespace that made it (a pid means
        nothing elsewhere); a live run's resources are never touched.
        """
        if not engine_available():
            return []
        import docker.errors

        me = _owner_identity()

        def stale(labels: Mapping[str, str]) -> bool:
            for key, value in me.items():
                if labels.get(key, value) != value:
                    return False
            try:
                pid = int(labels.get("agentverify.owner-pid", "0"))
            except ValueError:
                return False
            return pid > 0 and not owner_alive(pid, labels.get("agentverify.owner-start") or None)

        reaped: list[str] = []
        client = _connect()
        try:
            with _docker_errors("reaping stale containers"):
                for c in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}):
                    if stale(c.labels):
                        try:
                            c.remove(force=True)
                        except docker.errors.NotFound:
                            continue
                        except docker.errors.APIError as exc:
                            if exc.status_code == 409:  # another reaper's removal is under way
                                continue
                            raise
                        reaped.append(f"{c.labels.get('agentverify.run')}/{c.name} "
                                      f"(container)")
                for net in client.networks.list(filters={"label": f"{LABEL}=1"}):
                    if stale(net.attrs.get("Labels") or {}):
                        try:
                            net.remove()
                        except docker.errors.NotFound:
                            continue
                        except docker.errors.APIError:  # still in use: a live container
                            continue
                        reaped.append(f"{net.attrs['Labels'].get('agentverify.run')}/"
                                      f"{net.name} (network)")
        finally:
            client.close()
        return reaped

    # ----------------------------------------------------------------- images

    def _ensure_image(self, spec: ServiceSpec) -> str:
        """The id of the spec's image (pulled only when ``stack.pull`` is true)."""
        import docker.errors

        image = spec.image
        if image in self._image_ids:
            return self._image_ids[image]
        try:
            with _docker_errors(f"looking up image {image}"):
                found = self.client.images.get(image)
        except BackendUnavailable as exc:
            if not isinstance(exc.__cause__, docker.errors.ImageNotFound):
                raise
            if not self.pull:
                fix = ("run `agentverify images build`" if image.startswith("agentverify/")
                       else f"pull it (docker pull {image}) or set stack.pull: true")
                raise BackendUnavailable(
                    f"image {image} is missing: {fix}, or name another image in "
                    f"stack.images.{spec.name}") from None
            self._pull(image)
            found = self.client.images.get(image)
        if image.startswith("agentverify/"):
            from agentverify.images import stale_source_reason

            # a green run on code older than the checkout would be a lie
            stale = stale_source_reason((found.attrs.get("Config") or {}).get("Labels") or {},
                                        self.config)
            if stale:
                raise BackendUnavailable(f"image {image} is stale: {stale}; run "
                                         f"`agentverify images build`")
        self._image_ids[image] = found.id
        return found.id

    def _pull(self, image: str) -> None:
        from docker.utils import parse_repository_tag

        repo, tag = parse_repository_tag(image)
        self.progress(f"pulling {image} (stack.pull is true)")
        last: dict[str, str] = {}
        with _docker_errors(f"pulling {image}"):
            for event in self.client.api.pull(repo, tag=tag or "latest", stream=True,
                                              decode=True):
                if "error" in event:
                    raise BackendUnavailable(f"pulling {image} failed: {event['error']}")
                layer, status = event.get("id", ""), event.get("status", "")
                # one line per state change of a layer, not per downloaded chunk
                if status and last.get(layer) != status:
                    last[layer] = status
                    self.progress(f"{image}: {layer + ': ' if layer else ''}{status}")
        self.progress(f"pulled {image}")

    # ----------------------------------------------------------------- helpers

    def _resolver(self, handle: Handle, peers: Mapping[str, Peer]) -> Resolver:
        return container_resolver(handle.spec, peer_lookup(handle.name, peers), who=handle.name)

    def _render(self, handle: Handle, peers: Mapping[str, Peer], text: str) -> str:
        return render_template(text, self._resolver(handle, peers))

    def _container(self, handle: Handle) -> Any:
        """The SDK container object, or None when it is gone."""
        import docker.errors

        try:
            with _docker_errors(f"inspecting {handle.name}"):
                return self.client.containers.get(_state(handle).name)
        except StackError as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return None
            raise

    def _remove_leftover(self, name: str) -> None:
        """A container of this run with this name (an earlier failed attempt) goes."""
        import docker.errors

        run_id = self._require_run().run_id
        with _docker_errors(f"removing the earlier {name}"), \
                contextlib.suppress(docker.errors.NotFound):
            old = self.client.containers.get(name)
            if old.labels.get("agentverify.run") == run_id:
                old.remove(force=True)

    # ----------------------------------------------------------------- services

    def start(self, spec: ServiceSpec, instance: str, *, peers: Mapping[str, Peer],
              generation: int = 1, _host_ports: Mapping[str, int] | None = None,
              _keep_files: bool = False) -> Handle:
        run = self._require_run()
        if self._closed.is_set():
            raise ServiceStartError(f"{instance}: not started, the run is being torn down")
        image_id = self._ensure_image(spec)
        name = container_name(run.run_id, instance, generation)
        aliases = aliases_for(spec, instance, generation)
        dirs = self._require_run().instance_dirs(instance, generation, spec.persistent)
        state = DockerState(dirs=dirs, peers=dict(peers), log=dirs.base / "log", name=name,
                            alias=aliases[0], aliases=aliases, image_id=image_id)
        handle = Handle(spec=spec, instance=instance, generation=generation, backend=self,
                        state=state)
        for relpath, content in spec.files.items():
            if _keep_files and (dirs.conf / relpath).exists():
                continue  # a restart keeps what write_file() changed (e.g. the upstream)
            write_atomic(dirs.conf / relpath, self._render(handle, peers, content))
        env = {k: self._render(handle, peers, v) for k, v in spec.env.items()}
        env.update({RUN_ID_ENV: run.run_id, "AGENTVERIFY_INSTANCE": handle.name,
                    "PYTHONUNBUFFERED": "1"})
        argv = [self._render(handle, peers, a) for a in spec.command]
        labels = self._labels(**{"agentverify.service": spec.name,
                                 "agentverify.instance": instance,
                                 "agentverify.generation": str(generation)})
        host_ports = dict(_host_ports or {})
        ports = {f"{p.port}/tcp": (BIND, host_ports.get(p.name)) for p in spec.ports}
        self._remove_leftover(name)
        container_id = self._create_and_start(
            handle, argv, env=env, labels=labels, ports=ports, aliases=aliases,
            volumes=[(dirs.conf, CONF_DIR), (dirs.data, DATA_DIR)],
            resources=resource_kwargs(spec))
        state.container_id = container_id
        handle.started_at = time.monotonic()
        state.host_ports = self._read_host_ports(handle)
        if spec.role == ROLE_AGENT:
            state.ip = self._read_ip(handle)
        return handle

    def _create_and_start(self, handle: Handle, argv: list[str], *, env: dict[str, str],
                          labels: dict[str, str], ports: dict[str, tuple[str, int | None]],
                          aliases: list[str], volumes: list[tuple[Path, str]],
                          resources: dict[str, int]) -> str:
        """Create and start the container through testcontainers; return its id."""
        os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"  # we reap by label ourselves
        from testcontainers.core.config import testcontainers_config
        from testcontainers.core.container import DockerContainer

        testcontainers_config.ryuk_disabled = True
        name = _state(handle).name
        tc = (DockerContainer(_state(handle).image_id, env=env)
              .with_name(name)
              .with_command(argv)
              .with_network(_NetworkRef(self.network_name))
              .with_network_aliases(*aliases)
              .with_kwargs(labels=labels, init=True, working_dir=DATA_DIR,
                           stop_signal="SIGTERM", **resources))
        # published on 127.0.0.1 only; a None host port is a random free one
        tc.ports.update(ports)  # type: ignore[arg-type]
        for host_dir, container_dir in volumes:
            tc.with_volume_mapping(str(host_dir), container_dir, mode="rw")
        try:
            with _docker_errors(f"{handle.name}: docker could not start {handle.spec.image}",
                                error=ServiceStartError,
                                logs=lambda: self._logs_by_name(name, 30)):
                tc.start()
                if self._closed.is_set():  # close() ran meanwhile and may have missed it
                    raise ServiceStartError(f"{handle.name}: not started, the run is "
                                            "being torn down")
                return str(tc.get_wrapped_container().id)
        except BaseException:
            with contextlib.suppress(Exception):
                tc.get_docker_client().client.containers.get(name).remove(force=True)
            raise
        finally:
            tc.get_docker_client().client.close()

    def _logs_by_name(self, name: str, tail: int) -> str:
        return self.client.containers.get(name).logs(tail=tail).decode("utf-8", "replace")

    def _read_host_ports(self, handle: Handle) -> dict[str, int]:
        container = self._container(handle)
        if container is None:
            return {}
        published = container.attrs.get("NetworkSettings", {}).get("Ports") or {}
        out: dict[str, int] = {}
        for p in handle.spec.ports:
            for binding in published.get(f"{p.port}/tcp") or []:
                if binding.get("HostIp") == BIND and binding.get("HostPort"):
                    out[p.name] = int(binding["HostPort"])
        return out

    def _read_ip(self, handle: Handle) -> str:
        container = self._container(handle)
        if container is None:
            return ""
        networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
        return str((networks.get(self.network_name) or {}).get("IPAddress") or "")

    def run_job(self, spec: ServiceSpec, instance: str, *, peers: Mapping[str, Peer],
                timeout: float) -> CommandResult:
        handle = self.start(spec, instance, peers=peers)
        deadline = time.monotonic() + timeout
        try:
            # polled rather than a blocking wait: a read timeout of the SDK would look
            # like an engine that went away
            while True:
                status = self.status(handle)
                if not status.running:
                    code = -1 if status.exit_code is None else status.exit_code
                    return CommandResult(tuple(spec.command), code, self.logs(handle, 200))
                if time.monotonic() >= deadline:
                    self.kill(handle)
                    return CommandResult(tuple(spec.command), -1, self.logs(handle, 50)
                                         + f"\n[agentverify] job timed out after {timeout:.0f}s")
                time.sleep(0.1)
        finally:
            self.stop(handle, grace=0)

    def stop(self, handle: Handle, grace: float | None = None) -> None:
        """Stop (SIGTERM, SIGKILL after ``grace``), keep the log, remove. Idempotent."""
        import docker.errors

        grace = handle.spec.stop_grace if grace is None else grace
        container = self._container(handle)
        if container is None:
            return
        with _docker_errors(f"stopping {handle.name}"):
            try:
                if container.status == "running":
                    container.stop(timeout=int(math.ceil(grace)))
                self._save_log(handle, container)
                container.reload()
                _state(handle).exit_code = container.attrs.get("State", {}).get("ExitCode")
                container.remove(force=True)
            except docker.errors.NotFound:
                return

    def _save_log(self, handle: Handle, container: Any) -> None:
        """Keep the container's output in the run directory (it goes with the container)."""
        with contextlib.suppress(Exception):
            _state(handle).log.write_bytes(container.logs(tail=5000))

    def kill(self, handle: Handle) -> None:
        """SIGKILL; the exited container stays (status and logs) until :meth:`stop`."""
        import docker.errors

        container = self._container(handle)
        if container is None:
            return
        with _docker_errors(f"killing {handle.name}"):
            try:
                container.kill()
                container.wait(timeout=10)
            except docker.errors.APIError as exc:
                if exc.status_code not in (404, 409):  # gone / not running: already dead
                    raise

    def signal(self, handle: Handle, sig: int) -> None:
        """``docker kill --signal``: the container's init (``init=True``) hands it to the
        command's process, as the local backend signals the group leader."""
        import docker.errors

        name = signal.Signals(sig).name
        container = self._container(handle)
        if container is None:
            raise StackError(f"{handle.name}: container is gone: cannot send it {name}")
        with _docker_errors(f"sending {name} to {handle.name}"):
            try:
                container.kill(signal=name)
            except docker.errors.APIError as exc:
                if exc.status_code == 409:  # not running
                    raise StackError(f"{handle.name} is not running: cannot send it "
                                     f"{name}") from None
                raise

    def restart(self, handle: Handle, *, peers: Mapping[str, Peer]) -> Handle:
        """Stop and start again, on the same host ports and data directory.

        The container is recreated rather than ``docker restart``-ed: docker gives a
        restarted container new random host ports (seen on 20.10). Its files stay as
        they are, with whatever :meth:`write_file` changed since the start.
        """
        ports = dict(_state(handle).host_ports)
        self.stop(handle)
        return self.start(handle.spec, handle.instance, peers=peers,
                          generation=handle.generation, _host_ports=ports, _keep_files=True)

    def status(self, handle: Handle) -> ServiceStatus:
        container = self._container(handle)
        if container is None:
            return ServiceStatus(False, _state(handle).exit_code, "container removed")
        state = container.attrs.get("State", {})
        if state.get("Running"):
            return ServiceStatus(True)
        if state.get("Status") == "created":
            return ServiceStatus(False, None, "created, never started")
        detail = "out of memory" if state.get("OOMKilled") else state.get("Error", "")
        return ServiceStatus(False, int(state.get("ExitCode", -1)), detail)

    def logs(self, handle: Handle, tail: int = 50) -> str:
        container = self._container(handle)
        if container is None:  # removed: its output was saved by stop()
            return tail_file(_state(handle).log, tail)
        with _docker_errors(f"reading the log of {handle.name}"):
            return container.logs(tail=tail).decode("utf-8", "replace")

    def exec(self, handle: Handle, argv: list[str], *, timeout: float = 30.0) -> CommandResult:
        rendered = [self._render(handle, _state(handle).peers, a) for a in argv]
        container = self._container(handle)
        if container is None:
            return CommandResult(tuple(rendered), 125, f"{handle.name}: container is gone")
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                with _docker_errors(f"exec in {handle.name}"):
                    result["res"] = container.exec_run(rendered, stdout=True, stderr=True)
            except BaseException as exc:  # handed to the caller's thread
                result["exc"] = exc

        worker = threading.Thread(target=run, name=f"exec-{handle.name}", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            return CommandResult(tuple(rendered), -1, f"timed out after {timeout}s")
        if "exc" in result:
            raise result["exc"]
        code, output = result["res"]
        return CommandResult(tuple(rendered), int(code if code is not None else -1),
                             (output or b"").decode("utf-8", "replace"))

    def endpoint(self, handle: Handle, port: str) -> tuple[str, int]:
        st = _state(handle)
        ports = st.host_ports
        if port not in ports:
            if port not in {p.name for p in handle.spec.ports}:
                raise StackError(f"{handle.name} has no port {port!r} "
                                 f"(has {[p.name for p in handle.spec.ports]})")
            ports = st.host_ports = self._read_host_ports(handle)
            if port not in ports:
                raise StackError(f"{handle.name}: port {port!r} is not published "
                                 f"(status: {self.status(handle)})")
        return BIND, ports[port]

    def address(self, handle: Handle, port: str) -> tuple[str, int]:
        """How the other containers reach an instance: its network alias, except agent
        replicas, which go by their IP address: nginx resolves upstream names only when it
        loads its config, and refuses to reload while a listed name does not resolve — as
        a killed replica's alias does not."""
        st = _state(handle)
        if st.ip:
            return st.ip, handle.spec.port(port).port
        return st.alias, handle.spec.port(port).port

    def write_file(self, handle: Handle, relpath: str, content: str) -> None:
        st = _state(handle)
        write_atomic(st.dirs.conf / relpath, self._render(handle, st.peers, content))

    def volume_path(self, handle: Handle) -> Path:
        return _state(handle).dirs.data


class _NetworkRef:
    """What testcontainers needs of a network (its name); we create it with labels."""

    def __init__(self, name: str) -> None:
        self.name = name
