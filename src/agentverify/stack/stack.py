"""The Stack: the whole system under test, brought up and changed as operations would.

Example:
    >>> from agentverify.config import load_config
    >>> with Stack.from_config(load_config(env="dev"), backend="local") as stack:  # doctest: +SKIP
    ...     httpx.post(stack.endpoints["lb"] + "/chat", json={"message": "hi"})
    ...     stack.rolling_update("v2")

``up()`` starts services in parallel along the dependency graph, each gated on its own
readiness check; ``down()`` stops everything it started, in reverse order, and is
idempotent. Agent replicas are individually addressable instances (``agent-0`` ..);
every change to the set of serving replicas rewrites the nginx upstream and the
Prometheus targets, and waits until nginx serves the new generation.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentverify.errors import (
    DeployError,
    RollbackError,
    ServiceStartError,
    StackError,
)
from agentverify.secrets import Redactor
from agentverify.stack.backend import Backend, Handle, Peer, get_backend
from agentverify.stack.routes import FaultRoutes
from agentverify.stack.runstate import RunContext, reap_stale_runs
from agentverify.stack.spec import (
    ROLE_AGENT,
    ROLE_FAULTS,
    ROLE_LB,
    ROLE_METRICS,
    ServiceSpec,
    StackSpec,
)
from agentverify.traffic import upstream_conf, wait_for_generation

__all__ = ["Stack", "Replica", "ProgressEvent", "Rollout", "StepTiming", "reap_leftovers"]


def _readable(directory: Path) -> None:
    """Make what a caller wrote into a data directory readable by everyone (a
    container's user reads it)."""
    for path in [directory, *directory.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))


def _side_by_side(fn: Callable[[Any], None], items: Iterable[Any]) -> list[BaseException]:
    """Call ``fn`` on every item, each in a thread of its own; returns the errors they
    raised. An interrupt (KeyboardInterrupt) is raised once every item had its turn.

    At interpreter exit (``Stack.down`` registered with atexit) no thread pool takes work
    any more (concurrent.futures shuts down before atexit callbacks run): the items are
    then done one after another.
    """
    items = list(items)
    errors: list[BaseException] = []
    with cf.ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        futures = []
        for item in items:
            try:
                futures.append(pool.submit(fn, item))
            except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
                try:
                    fn(item)
                except BaseException as exc:  # the next item still gets its turn
                    errors.append(exc)
        errors += [exc for fut in futures if (exc := fut.exception()) is not None]
    for exc in errors:
        if not isinstance(exc, Exception):
            raise exc
    return errors


@dataclass(frozen=True)
class ProgressEvent:
    """A state change of one instance, for progress displays."""

    instance: str
    state: str  # starting | ready | failed | stopping | stopped | running-job | info
    seconds: float | None = None
    detail: str = ""


ProgressSink = Callable[[ProgressEvent], None]


@dataclass
class Replica:
    """One agent replica: its slot (agent-N), the version it runs and its instance."""

    slot: int
    version: str
    handle: Handle
    #: how this replica replaced its predecessor (None for one started with the stack)
    replaced: StepTiming | None = None

    @property
    def instance(self) -> str:
        return f"agent-{self.slot}"

    @property
    def url(self) -> str:
        return self.handle.url("http")


@dataclass
class StepTiming:
    """Timing of one replica's replacement during a rollout, and how the old one ended
    (``exit_code`` None: not known; see :attr:`ServiceStatus.stopped_cleanly`)."""

    instance: str
    from_version: str
    to_version: str
    healthy_s: float
    switched_s: float
    stopped_s: float
    exit_code: int | None = None
    stopped_cleanly: bool = True


@dataclass
class Rollout:
    """What one rolling update did: the replicas it replaced, and why it stopped early."""

    version: str
    from_version: str
    steps: list[StepTiming] = field(default_factory=list)
    failure: str | None = None
    seconds: float = 0.0

    @property
    def completed(self) -> bool:
        return self.failure is None

    @property
    def unclean_stops(self) -> list[StepTiming]:
        """Replaced replicas that did not end cleanly on the stop signal (killed after
        the grace period, or crashed); ending *by* SIGTERM is clean."""
        return [step for step in self.steps if not step.stopped_cleanly]


@dataclass
class _Preparation:
    """Work :meth:`Stack.up` does on one service (see :meth:`Stack.prepare`)."""

    data: Callable[[Path], None] | None = None
    ready: Callable[[Handle], None] | None = None


@dataclass
class _State:
    #: the serving instance of each non-agent service, by service name
    services: dict[str, Handle] = field(default_factory=dict)
    #: every instance started and not yet stopped (teardown stops exactly these)
    started: list[Handle] = field(default_factory=list)
    replicas: list[Replica] = field(default_factory=list)
    generation: int = 0


class Stack:
    """The system under test, on one backend.

    Args:
        spec: what to run.
        backend: how to run it (a :class:`~agentverify.stack.backend.Backend`).
        agent_factory: ``version -> ServiceSpec`` of the agent at that version, used by
            rolling updates, rollbacks and scaling.
        progress: receives a :class:`ProgressEvent` for every state change.
        redactor: masks secrets in every message this stack produces.
        config: the resolved :class:`~agentverify.config.Config` (timeouts); optional.
    """

    def __init__(self, spec: StackSpec, backend: Backend, *,
                 agent_factory: Callable[[str], ServiceSpec] | None = None,
                 progress: ProgressSink | None = None,
                 redactor: Redactor | None = None,
                 state_dir: Path | None = None,
                 config: Any = None) -> None:
        self.spec = spec
        self.config = config
        self.backend = backend
        self.agent_factory = agent_factory
        self.progress = progress or (lambda event: None)
        self.redactor = redactor or Redactor()
        self.state_dir = state_dir
        self.run: RunContext | None = None
        self.up_seconds: float | None = None
        self._state = _State()
        self._lock = threading.RLock()
        self._routing_lock = threading.Lock()
        self._abort = threading.Event()
        self._is_up = False
        self._agent_specs: dict[str, ServiceSpec] = {}
        self._job_seconds: dict[str, float] = {}
        #: the fault proxy's routes, when the stack has one (stack.faults.enabled)
        self._routes: FaultRoutes | None = None
        #: seconds spent waiting on purpose, by reason (the deregistration delay)
        self.waits: dict[str, float] = {}
        #: every instance start: [instance, role, started unix, ready unix or None]
        self.start_log: list[list[Any]] = []
        #: every agent instance started since the last up(), serving or since retired
        #: (their request logs)
        self._agent_handles: list[Handle] = []
        #: ``(config, version) -> ServiceSpec``: how :meth:`reconfigure_agents` makes the
        #: agent from a changed config (set by :meth:`from_config`)
        self._agent_spec_for: Callable[[Any, str], ServiceSpec] | None = None
        #: the config the agent replicas run with (differs from ``config`` after
        #: :meth:`reconfigure_agents`)
        self.agent_config: Any = config
        #: replaced replicas still stopping (``promote(background=True)``); see :meth:`settle`
        self._stopping: list[cf.Future[None]] = []
        #: what up() does on a service beside starting it (:meth:`prepare`)
        self._prepared: dict[str, _Preparation] = {}
        #: seconds up() spent on what :meth:`prepare` gave it, on its own critical path
        #: (work on services that start side by side counted once)
        self.prepared_seconds = 0.0
        self._prepared_until = float("-inf")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, config: Any, *, backend: str | Backend | None = None,
                    progress: ProgressSink | None = None,
                    environ: Mapping[str, str] | None = None,
                    state_dir: Path | None = None,
                    only: tuple[str, ...] | None = None, jobs: bool = True) -> Stack:
        """Build the seed's stack from a resolved :class:`~agentverify.config.Config`
        (``only``: just these services and their dependencies; ``jobs=False``: without
        the one-off jobs, such as the knowledge ingest)."""
        from agentverify.secrets import resolve_api_keys
        from agentverify.stack.spec import agent_spec, build_stack_spec

        keys = resolve_api_keys(config, environ)
        redactor = Redactor(keys.values())
        be = backend if not isinstance(backend, (str, type(None))) else \
            get_backend(backend or config.stack.backend, config=config)
        spec = build_stack_spec(config, api_keys=keys, backend=be.name)
        if only:
            spec = spec.subset(only)
        if not jobs:
            spec = spec.without_jobs()

        def spec_for(cfg: Any, version: str) -> ServiceSpec:
            return agent_spec(cfg, version=version, api_key_env=keys)

        stack = cls(spec, be, progress=progress, redactor=redactor, state_dir=state_dir,
                    config=config, agent_factory=lambda v: spec_for(config, v))
        stack._agent_spec_for = spec_for
        return stack

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Stack:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ------------------------------------------------------------------ public state

    @property
    def is_up(self) -> bool:
        return self._is_up

    @property
    def replicas(self) -> list[Replica]:
        with self._lock:
            return list(self._state.replicas)

    @property
    def versions(self) -> list[str]:
        return [r.version for r in self.replicas]

    def service(self, name: str) -> Handle:
        """The (first) running instance of a service."""
        with self._lock:
            handle = self._state.services.get(name)
            running = sorted(self._state.services)
        if handle is None:
            raise StackError(f"service {name!r} is not running (running: {running})")
        return handle

    def instances(self) -> list[Handle]:
        """Every instance currently started (services, replicas, ones being replaced)."""
        with self._lock:
            return list(self._state.started)

    @property
    def endpoints(self) -> dict[str, str]:
        """Service name -> URL reachable from this machine (127.0.0.1 only).

        ``lb`` is where clients send traffic: through the fault proxy's ``lb`` route when
        the stack has one (so a fault can hit the front door too).
        """
        out: dict[str, str] = {}
        with self._lock:
            for name, handle in self._state.services.items():
                if handle.spec.ports:
                    out[name] = handle.url()
            for r in self._state.replicas:
                out[r.instance] = r.url
        if "lb" in out and self._routes is not None and "lb" in self._routes.edges:
            out["lb"] = self._routes.proxy.url("lb")
        return out

    @property
    def faults(self) -> FaultRoutes:
        """The fault proxy's routes (its client is ``faults.client``).

        Raises:
            StackError: the stack runs without a fault proxy (``stack.faults.enabled``).
        """
        if self._routes is None:
            raise StackError("this stack has no fault proxy: set stack.faults.enabled: true "
                             "to inject faults")
        return self._routes

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def data_path(self, name: str) -> Path:
        """Host path of the data directory of a running service or agent replica
        (``agent-1``: its serving instance's); read it, change a service's only through
        :meth:`replace_data`. On every backend it is a directory on this machine."""
        return Path(self.backend.volume_path(self._instance_named(name)))

    def agent_log(self, name: str) -> Path:
        """Host path of a replica's request log, the file ``stack.agent.variables.log_file``
        names to the agent (it may not exist yet: the agent creates it).

        Raises:
            StackError: ``name`` is not a replica, or the agent is given no log file.
        """
        from agentverify.stack.spec import AGENT_LOG_NAME

        if name not in {r.instance for r in self.replicas}:
            raise StackError(f"{name!r} is not an agent replica (replicas: "
                             f"{', '.join(r.instance for r in self.replicas)})")
        config = self.agent_config
        if config is not None and config.stack.agent.variables.log_file is None:
            raise StackError("the agent is given no request log: stack.agent.variables."
                             "log_file is null")
        return self.data_path(name) / AGENT_LOG_NAME

    def agent_logs(self) -> list[tuple[str, Path]]:
        """``(instance name, request log path)`` of every agent instance this run of the
        stack started, serving or since replaced (``agent-0``, ``agent-0.g2`` ...), oldest first;
        empty when the agent is given no request log (see :meth:`agent_log`)."""
        from agentverify.stack.spec import AGENT_LOG_NAME

        config = self.agent_config
        if config is not None and config.stack.agent.variables.log_file is None:
            return []
        with self._lock:
            handles = list(self._agent_handles)
        return [(h.name, Path(self.backend.volume_path(h)) / AGENT_LOG_NAME) for h in handles]

    @property
    def lb_url(self) -> str:
        """Where clients send traffic (see :attr:`endpoints`)."""
        lb = self.service("lb")
        if self._routes is not None and "lb" in self._routes.edges:
            return self._routes.proxy.url("lb")
        return lb.url("http")

    def to_json(self) -> dict[str, Any]:
        """The shape of ``reports/stack.json``."""
        services: dict[str, dict[str, Any]] = {}
        for name, url in self.endpoints.items():
            services[name] = {"url": url}
        for r in self.replicas:
            services[r.instance]["version"] = r.version
        for name, handle in self._peers().items():
            if handle.spec.implementation and name in services:
                services[name]["implementation"] = handle.spec.implementation
        return {"backend": self.backend.name, "env": self.spec.env_name,
                "run_id": self.run.run_id if self.run else None,
                "run_dir": str(self.run.run_dir) if self.run else None,
                "services": services}

    def write_stack_json(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    # ------------------------------------------------------------------ up / down

    def prepare(self, name: str, *, data: Callable[[Path], None] | None = None,
                ready: Callable[[Handle], None] | None = None) -> None:
        """Work for :meth:`up` on the service ``name`` (not an agent): ``data(directory)``
        fills its empty data directory before its first start (what it writes is made
        readable by everyone, as in :meth:`replace_data`); ``ready(handle)`` runs once it
        is ready and before anything that depends on it starts. Either may raise: the
        start-up then fails like a service that did not start.

        A restore the agents start on (the seed's order: the data, then the agent):
        Redis started on the archived RDB file, Milvus' collections recreated before the
        first replica asks.

        Raises:
            StackError: the stack is up, or has no such service (or it is an agent).
        """
        if self._is_up:
            raise StackError(f"prepare({name!r}): the stack is up already")
        names = {s.name: s for s in self.spec.services}
        if name not in names or names[name].role == ROLE_AGENT:
            why = "the agent's replicas start on what the services hold" \
                if name in names else "no such service"
            raise StackError(f"prepare({name!r}): {why}; the stack's services: "
                             f"{', '.join(n for n, s in names.items() if s.role != ROLE_AGENT)}")
        self._prepared[name] = _Preparation(data=data, ready=ready)

    def _run_prepared(self, step: Callable[[], None]) -> None:
        t0 = time.monotonic()
        try:
            step()
        finally:
            with self._lock:  # the union of the spans so far (they end in order)
                ended = time.monotonic()
                self.prepared_seconds += max(0.0, ended - max(t0, self._prepared_until))
                self._prepared_until = max(self._prepared_until, ended)

    def up(self) -> Stack:
        """Start every service, dependencies first, in parallel where the graph allows.

        :meth:`down` is also registered to run at interpreter exit: a script that never
        calls it leaves nothing behind when it ends."""
        if self._is_up:
            return self
        reaped = reap_leftovers([self.backend], self.state_dir)
        for item in reaped:
            self.progress(ProgressEvent(item, "info", detail="reaped leftover of a killed run"))
        self.run = RunContext.create(self.backend.name, env_name=self.spec.env_name,
                                     state_dir=self.state_dir)
        with self._lock:
            self._agent_handles = []  # a new run: the last one's logs are not its
        self.backend.open(self.run)
        atexit.register(self.down)
        self._abort.clear()
        started = time.monotonic()
        order = self.spec.order()
        futures: dict[str, cf.Future[None]] = {}
        pool = cf.ThreadPoolExecutor(max_workers=len(order) + 2,
                                     thread_name_prefix="agentverify-up")
        try:
            for svc in order:
                futures[svc.name] = pool.submit(self._bring_up, svc, futures)
            done, _ = cf.wait(futures.values(), return_when=cf.FIRST_EXCEPTION)
            errors = [f.exception() for f in futures.values()
                      if f.done() and f.exception() is not None]
            first = next((e for e in errors if not isinstance(e, _Skipped)), None)
            if first is not None:
                self._abort.set()
                raise first
            cf.wait(futures.values())
        except BaseException:
            self._abort.set()
            # stop what is up first: threads still waiting on those instances then fail
            # fast, and any thread about to start one sees the abort flag
            self._stop_started()
            pool.shutdown(wait=True, cancel_futures=True)
            self._stop_started()
            raise
        pool.shutdown(wait=True)
        self.up_seconds = time.monotonic() - started
        self._is_up = True
        return self

    def _bring_up(self, svc: ServiceSpec, futures: Mapping[str, cf.Future[None]]) -> None:
        for dep in svc.depends_on:
            try:
                futures[dep].result()
            except BaseException as exc:
                raise _Skipped(f"{svc.name}: not started, {dep} failed") from exc
        if self._abort.is_set():
            raise _Skipped(f"{svc.name}: not started, start-up aborted")
        if svc.kind == "job":
            self._run_job(svc)
        elif svc.role == ROLE_AGENT:
            self._agent_specs[svc.version or "v1"] = svc
            self._start_replicas(svc, range(svc.replicas))
            self._sync_targets()
        else:
            if svc.role == ROLE_LB:
                replicas = self.replicas
                servers = [self._lb_address(r.handle) for r in replicas]
                with self._lock:
                    self._state.generation += 1
                    svc = svc.with_files(**{"upstream.conf":
                                            upstream_conf(servers, self._state.generation)})
            prepared = self._prepared.get(svc.name, _Preparation())
            fill, on_ready = prepared.data, prepared.ready
            if fill is not None:
                assert self.run is not None
                data = self.run.instance_dirs(svc.name, 1, svc.persistent).data

                def populate() -> None:
                    fill(data)
                    _readable(data)

                self._run_prepared(populate)
            handle = self._start_instance(svc, svc.name)
            if svc.role == ROLE_FAULTS:
                edges = tuple(self.config.stack.faults.edges) if self.config is not None \
                    else ("redis", "milvus", "llm", "agent", "lb")
                self._routes = FaultRoutes(handle, edges)
                self.progress(ProgressEvent(handle.name, "info",
                                            detail=f"fault proxy: {svc.implementation}"))
            with self._lock:
                self._state.services[svc.name] = handle
            if svc.role == ROLE_LB and self._routes is not None:
                self._routes.front(handle)
            if svc.role == ROLE_METRICS:
                self._sync_targets()
            if on_ready is not None:
                self._run_prepared(lambda: on_ready(handle))

    def _peers(self) -> dict[str, Handle]:
        with self._lock:
            return dict(self._state.services)

    def _peers_for(self, svc: ServiceSpec, instance: str) -> Mapping[str, Peer]:
        """The peers an instance is rendered against: an agent replica reaches its
        dependencies through its own fault-proxy routes when the stack has them."""
        peers = self._peers()
        if svc.role == ROLE_AGENT and self._routes is not None:
            return self._routes.peers_for(instance, peers)
        return peers

    def _lb_address(self, handle: Handle) -> tuple[str, int]:
        """Where nginx reaches an instance of a replica: through its route, or directly."""
        if self._routes is not None:
            return self._routes.to_instance(handle)
        return handle.address("http")

    def _drain(self, *, account: bool = True) -> None:
        """The deregistration delay (``stack.lb.drain_s``): after a reload, nginx's old
        workers still forward the requests they had accepted to the instances they knew;
        stopping those at once would fail (or retry) them. ``account=False``: the caller
        accounts for the part of it nothing else ran beside (a rollout's next start)."""
        delay = self._drain_s()
        if delay:
            time.sleep(delay)
            if account:
                self._account_drain(delay)

    def _drain_s(self) -> float:
        return self.config.stack.lb.drain_s if self.config is not None else 0.0

    def _account_drain(self, seconds: float) -> None:
        """Journal ``seconds`` (at most one deregistration delay) spent only draining as a
        wait."""
        seconds = min(seconds, self._drain_s())
        if seconds > 0:
            with self._lock:
                self.waits["drain"] = self.waits.get("drain", 0.0) + seconds

    def _retire(self, handle: Handle, grace: float | None = None) -> None:
        """Stop an agent instance that no longer serves, and drop what routed to it."""
        self.backend.stop(handle, grace=grace)
        self._forget(handle)
        if self._routes is not None:
            self._routes.forget_instance(handle)

    def _start_instance(self, svc: ServiceSpec, instance: str, generation: int = 1, *,
                        health_timeout: float | None = None) -> Handle:
        """Start one instance and wait until its readiness check passes."""
        self.progress(ProgressEvent(instance, "starting"))
        t0 = time.monotonic()
        log_entry = [instance, svc.role, time.time(), None]
        with self._lock:
            self.start_log.append(log_entry)
        try:
            handle = self.backend.start(svc, instance, peers=self._peers_for(svc, instance),
                                        generation=generation)
        except StackError as exc:
            self.progress(ProgressEvent(instance, "failed", detail=str(exc).splitlines()[0]))
            raise type(exc)(self.redactor(str(exc))) from None
        with self._lock:
            self._state.started.append(handle)
            if svc.role == ROLE_AGENT:
                self._agent_handles.append(handle)
        if self._abort.is_set():  # start-up was aborted while this one was starting
            self._stop_quietly(handle)
            self._forget(handle)
            raise _Skipped(f"{instance}: stopped, start-up aborted")
        try:
            if svc.health is not None:
                deadline = None if health_timeout is None else time.monotonic() + health_timeout
                svc.health.wait_until_ready(handle, deadline=deadline)
        except StackError as exc:
            if not self._abort.is_set():  # after an abort, failures are consequences
                self.progress(ProgressEvent(instance, "failed", time.monotonic() - t0,
                                            str(exc).splitlines()[0]))
            raise type(exc)(self.redactor(str(exc))) from None
        handle.ready_at = time.monotonic()
        handle.ready_seconds = handle.ready_at - t0
        log_entry[3] = time.time()
        self.progress(ProgressEvent(instance, "ready", handle.ready_at - t0))
        return handle

    def _run_job(self, svc: ServiceSpec) -> None:
        self.progress(ProgressEvent(svc.name, "running-job"))
        t0 = time.monotonic()
        res = self.backend.run_job(svc, svc.name, peers=self._peers(),
                                   timeout=self.config.stack.start_timeout if self.config
                                   else 120.0)
        if not res.ok:
            self.progress(ProgressEvent(svc.name, "failed", time.monotonic() - t0,
                                        f"exit code {res.exit_code}"))
            raise ServiceStartError(self.redactor(
                f"job {svc.name} failed with exit code {res.exit_code}\n"
                f"--- last output of {svc.name} ---\n"
                + "\n".join(res.output.strip().splitlines()[-30:])))
        last = (res.output.strip().splitlines() or [""])[-1]
        with self._lock:
            self._job_seconds[svc.name] = time.monotonic() - t0
        self.progress(ProgressEvent(svc.name, "ready", time.monotonic() - t0, last))

    def _start_replicas(self, svc: ServiceSpec, slots: range | list[int]) -> list[Replica]:
        new: list[Replica] = []
        with cf.ThreadPoolExecutor(max_workers=max(1, len(slots)),
                                   thread_name_prefix="agentverify-replica") as pool:
            futs = {slot: pool.submit(self._start_instance,
                                      svc.for_replica(f"agent-{slot}"),
                                      f"agent-{slot}")
                    for slot in slots}
            errors = []
            for slot, fut in futs.items():
                try:
                    new.append(Replica(slot, svc.version or "v1", fut.result()))
                except BaseException as exc:  # collect, so every started one is tracked
                    errors.append(exc)
        with self._lock:
            self._state.replicas.extend(new)
            self._state.replicas.sort(key=lambda r: r.slot)
        if errors:
            raise errors[0]
        return new

    def down(self) -> None:
        """Stop everything this stack started: the agents (and what routes to or watches them)
        before what they use (:meth:`StackSpec.stop_ranks`). Idempotent."""
        with contextlib.suppress(StackError):  # a replica whose stop failed is stopped below
            self.settle()
        with self._lock:
            was_open = self.run is not None
            self._is_up = False
            routes, self._routes = self._routes, None
        if routes is not None:
            routes.close()  # the proxies go with their service
        error: StackError | None = None
        try:
            self._stop_started()
        except StackError as exc:
            error = exc
        finally:
            with self._lock:
                self._state = _State()
            atexit.unregister(self.down)
            try:  # whatever happened above: the backend removes what is left of the run
                self.backend.close()
            except StackError as exc:
                error = error or exc
        # a record stays open while anything may be left: the next run reaps it
        if error is None and was_open and self.run is not None:
            self.run.close()
        if error is not None:
            raise error

    def _stop_started(self) -> None:
        """Stop every started instance, rank by rank; all of a rank
        (:meth:`StackSpec.stop_ranks`) at once."""
        with self._lock:
            everything = list(self._state.started)
            self._state.started = []
        ranks = self.spec.stop_ranks()
        by_rank: dict[int, list[Handle]] = {}
        for h in everything:
            by_rank.setdefault(ranks.get(h.spec.name, 0), []).append(h)
        errors: list[BaseException] = []
        for rank in sorted(by_rank):
            errors += _side_by_side(self._stop_quietly, by_rank[rank])
        if errors:
            raise StackError(f"teardown: {len(errors)} instance(s) did not stop cleanly: "
                             f"{errors[0]}")

    def _stop_quietly(self, handle: Handle) -> None:
        self.progress(ProgressEvent(handle.name, "stopping"))
        # teardown does not need graceful draining; a short grace keeps Ctrl-C snappy
        self.backend.stop(handle, grace=min(handle.spec.stop_grace, 5.0))
        self.progress(ProgressEvent(handle.name, "stopped"))

    # ------------------------------------------------------------------ routing

    def _sync_routing(self, serving: list[Replica] | None = None) -> float:
        # one routing change at a time: a slower one must not write a stale upstream last
        with self._routing_lock:
            with self._lock:
                lb = self._state.services.get("lb")
                if lb is None:
                    return 0.0
                serving = list(self._state.replicas if serving is None else serving)
            servers = [self._lb_address(r.handle) for r in serving]
            with self._lock:
                self._state.generation += 1
                gen = self._state.generation
            t0 = time.monotonic()
            self.backend.write_file(lb, "upstream.conf", upstream_conf(servers, gen))
            # what `nginx -s reload` does, without a process to run it in (a docker exec
            # costs ~0.1 s on every routing change): SIGHUP to the master, which reads
            # its configuration again; the generation it then serves says it did
            self.backend.signal(lb, signal.SIGHUP)
            wait_for_generation(lb.url("http"), gen)
            return time.monotonic() - t0

    def _sync_targets(self) -> None:
        # under the lock: two threads syncing at once must not write a stale list last
        with self._lock:
            prom = self._state.services.get("prometheus")
            if prom is None:
                return
            groups = [{"targets": ["%s:%d" % r.handle.address("http")],
                       "labels": {"replica": r.instance, "version": r.version}}
                      for r in self._state.replicas]
            self.backend.write_file(prom, "targets/agents.json", json.dumps(groups, indent=1))

    # ------------------------------------------------------------------ operations

    def _agent_spec(self, version: str) -> ServiceSpec:
        if version not in self._agent_specs:
            if self.agent_factory is None:
                raise StackError("this stack has no agent factory: cannot change versions")
            self._agent_specs[version] = self.agent_factory(version)
        return self._agent_specs[version]

    @property
    def current_version(self) -> str:
        versions = self.versions
        return max(set(versions), key=versions.count) if versions else \
            (self.spec.by_role(ROLE_AGENT)[0].version or "v1")

    def replace_replica(self, replica: Replica, version: str, *,
                        health_timeout: float | None = None, drain: bool = True) -> Replica:
        """Start the new instance, wait healthy, switch traffic to it, stop the old one.

        ``health_timeout`` overrides the agent's readiness deadline (stack.start_timeout).
        ``drain=False`` stops the old instance *before* nginx is switched away from it —
        what many hand-written deploy scripts do; nginx then retries the requests it sends
        there on another replica (each runs twice). It exists to prove the gate on
        ``retried_requests``; never use it to deploy.
        """
        new, retire = self._switch_replica(replica, version, health_timeout=health_timeout,
                                           drain=drain)
        retire()
        return new

    def _switch_replica(self, replica: Replica, version: str, *,
                        health_timeout: float | None, drain: bool,
                        account_drain: bool = True,
                        ) -> tuple[Replica, Callable[[], float | None]]:
        """:meth:`replace_replica` up to the switch of traffic; returns the new replica and
        what is left: draining and stopping the old one (which fills ``new.replaced`` and
        returns when its drain ended, monotonic; None without a drain)."""
        svc = self._agent_spec(version).for_replica(replica.instance)
        t0 = time.monotonic()
        try:
            handle = self._start_instance(svc, replica.instance,
                                          generation=replica.handle.generation + 1,
                                          health_timeout=health_timeout)
        except StackError as exc:
            self._discard_failed(replica.instance, replica.handle.generation + 1)
            raise DeployError(f"{replica.instance} at {version} did not become healthy; "
                              f"{replica.instance} stays on {replica.version}: {exc}") from exc
        healthy = time.monotonic()
        new = Replica(replica.slot, version, handle)
        if not drain:
            self.progress(ProgressEvent(replica.handle.name, "stopping", detail="undrained"))
            self.backend.stop(replica.handle)
        with self._lock:
            self._state.replicas = [new if r is replica else r for r in self._state.replicas]
        self._sync_routing()
        self._sync_targets()
        switched = time.monotonic()

        def retire() -> float | None:
            drained_at = None
            if drain:
                self._drain(account=account_drain)
                drained_at = time.monotonic()
                self.progress(ProgressEvent(replica.handle.name, "stopping", detail="drained"))
            self.backend.stop(replica.handle)
            ended = self.backend.status(replica.handle)
            self._retire(replica.handle)
            self.progress(ProgressEvent(replica.handle.name, "stopped"))
            new.replaced = StepTiming(replica.instance, replica.version, version, healthy - t0,
                                      switched - t0, time.monotonic() - t0,
                                      exit_code=ended.exit_code,
                                      stopped_cleanly=ended.stopped_cleanly)
            return drained_at

        return new, retire

    def _discard_failed(self, instance: str, generation: int) -> None:
        with self._lock:
            failed = [h for h in self._state.started
                      if h.instance == instance and h.generation == generation]
        for h in failed:
            self._retire(h, grace=1.0)

    def _forget(self, handle: Handle) -> None:
        with self._lock:
            self._state.started = [h for h in self._state.started if h is not handle]

    def start_standby(self, version: str, *,
                      health_timeout: float | None = None) -> list[Replica]:
        """Start a new generation of every replica at ``version``, next to the serving one.

        The standby replicas are healthy but receive no traffic until :meth:`promote`
        (the seed's "deploy application" step, done blue/green so nothing is dropped).
        ``health_timeout`` overrides the readiness deadline (stack.start_timeout).

        Raises:
            DeployError: a standby replica did not become healthy (the ones that did are
                stopped again; the serving replicas are untouched).
        """
        svc = self._agent_spec(version)
        current = self.replicas
        standby: list[Replica] = []
        errors: list[BaseException] = []
        with cf.ThreadPoolExecutor(max_workers=max(1, len(current)),
                                   thread_name_prefix="agentverify-standby") as pool:
            futs = [(r, pool.submit(self._start_instance,
                                    svc.for_replica(r.instance), r.instance,
                                    r.handle.generation + 1, health_timeout=health_timeout))
                    for r in current]
            for r, fut in futs:
                try:
                    standby.append(Replica(r.slot, version, fut.result()))
                except BaseException as exc:  # keep going: every started one is tracked
                    errors.append(exc)
        if errors:
            for r in standby:
                self._retire(r.handle, grace=1.0)
            for r in current:
                self._discard_failed(r.instance, r.handle.generation + 1)
            raise DeployError(f"standby replicas at {version} did not become healthy; "
                              f"the serving replicas are untouched: {errors[0]}") from errors[0]
        return standby

    def agent_env(self, version: str) -> Mapping[str, str]:
        """The environment the agent at ``version`` is deployed with (secrets included:
        callers check presence, never print values)."""
        return self._agent_spec(version).env

    def discard(self, replica: Replica) -> None:
        """Stop a replica that is not serving (e.g. a standby that failed its checks)."""
        self._retire(replica.handle, grace=1.0)

    def promote(self, standby: list[Replica], *, drain: bool = True,
                background: bool = False) -> float:
        """Switch traffic to ``standby`` replicas and stop the ones they replace.

        ``drain``: wait the deregistration delay before the stops. False only where
        nothing sends traffic (between scenarios: a scenario's probes and loads are
        stopped by its clean-ups first); Prometheus may then record one failed scrape of
        a replaced replica, too short to hold any alert's ``for``. ``background``: return
        at the switch; the replaced replicas (no longer routed to, no longer a target)
        stop in a thread of their own, and :meth:`settle` (also the first thing
        :meth:`down` does) waits for them and raises what their stops raised."""
        t0 = time.monotonic()
        with self._lock:
            old = self._state.replicas
            self._state.replicas = sorted(standby, key=lambda r: r.slot)
        self._sync_routing()
        self._sync_targets()
        switched = time.monotonic() - t0
        if drain:
            self._drain()
        if background:
            self._retire_in_background(old)
        else:
            self._retire_all(old)
        return switched

    def _retire_in_background(self, replicas: list[Replica]) -> None:
        done: cf.Future[None] = cf.Future()

        def retire() -> None:
            try:
                self._retire_all(replicas)
            except BaseException as exc:  # kept for settle(): a thread has no caller
                done.set_exception(exc)
            else:
                done.set_result(None)

        with self._lock:
            self._stopping.append(done)
        threading.Thread(target=retire, name="agentverify-retire-replaced", daemon=True).start()

    def settle(self) -> None:
        """Wait until the replicas :meth:`promote` stops in the background have stopped.

        Raises:
            StackError: one did not stop cleanly (it stays among what :meth:`down` stops).
        """
        with self._lock:
            pending, self._stopping = self._stopping, []
        errors = []
        for done in pending:
            try:
                done.result()
            except Exception as exc:  # every one is waited for
                errors.append(exc)
        if errors:
            raise errors[0]

    def _retire_all(self, replicas: list[Replica]) -> None:
        """Stop ``replicas`` side by side (each stop mostly waits for a graceful exit)."""
        errors = _side_by_side(lambda r: self._retire(r.handle), replicas)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise StackError(f"{len(errors)} replicas did not stop cleanly: {errors[0]} (and "
                             + "; ".join(str(e).splitlines()[0] for e in errors[1:]) + ")")

    def rolling_update(self, version: str, *, health_timeout: float | None = None,
                       after_each: Callable[[Replica], str | None] | None = None,
                       drain: bool = True, force: bool = False) -> Rollout:
        """Replace replicas one at a time with ``version`` (the seed's rolling deploy).

        The one rollout loop of agentverify: rollbacks, restarts, reconfiguration and the
        ``rolling_update`` step use it too. After each replaced replica
        ``after_each(new)`` may return a reason to stop (e.g. it answered errors while
        baking). A replica that does not become healthy also stops the rollout; either
        way replicas already moved stay on ``version`` and the caller decides to roll
        back. ``force`` replaces replicas already on ``version`` too (a rolling restart);
        ``drain``: see :meth:`replace_replica`.
        """
        rollout = Rollout(version=version, from_version=self.current_version)
        t0 = time.monotonic()
        # like Kubernetes' maxSurge 1 / maxUnavailable 0: the replaced replica drains and
        # stops in the background while the next one starts (and the new one bakes); at
        # most one retires at a time, and every one has stopped when this returns
        retiring: tuple[Replica, cf.Future[float | None]] | None = None
        pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentverify-retire")

        def finish_retiring() -> None:
            nonlocal retiring
            if retiring is None:
                return
            new, fut = retiring
            retiring = None
            blocked = time.monotonic()
            drained_at = fut.result()
            if drained_at is not None:  # the part of the drain nothing else ran beside
                self._account_drain(min(drained_at, time.monotonic()) - blocked)
            assert new.replaced is not None
            rollout.steps.append(new.replaced)

        try:
            for replica in self.replicas:
                if replica.version == version and not force:
                    continue
                try:
                    new, retire = self._switch_replica(replica, version,
                                                       health_timeout=health_timeout,
                                                       drain=drain, account_drain=False)
                except DeployError as exc:
                    rollout.failure = str(exc).splitlines()[0]
                    break  # the replica before it is retired below
                # queued behind the previous retire (one worker): submitted before waiting
                # for that one, so a failed stop there cannot leave this one running
                fut = pool.submit(retire)
                finish_retiring()
                retiring = (new, fut)
                self.progress(ProgressEvent(new.instance, "info", detail=f"now on {version}"))
                reason = after_each(new) if after_each is not None else None
                if reason:
                    rollout.failure = reason
                    break
        finally:
            try:
                finish_retiring()
            finally:
                pool.shutdown(wait=True)
        rollout.seconds = time.monotonic() - t0
        return rollout

    # ------------------------------------------------------------------ agent configuration

    def reconfigure_agents(self, config: Any, *, version: str | None = None,
                           health_timeout: float | None = None,
                           at_once: bool = False, drain: bool = True,
                           background: bool = False) -> Rollout:
        """Restart every replica, one at a time, with the agent made from ``config`` (a
        changed copy of the stack's config: another rate limit, the backup model ...):
        the seed's "change config.yaml, restart the service", drained in nginx replica by
        replica through :meth:`rolling_update`. ``version`` (default: the current one)
        moves the replicas to another version in the same pass. ``at_once``: replace
        every replica in one blue/green switch instead (:meth:`start_standby` then
        :meth:`promote`: one agent start on the clock, for when no traffic is measured;
        the rollout then has no steps, it replaced no replica one by one); ``drain`` and
        ``background`` (with ``at_once``): see :meth:`promote`.

        The replicas run with ``config`` from now on (:attr:`agent_config`), also when a
        replica fails to start on it (the rollout stops there; the caller decides).

        Raises:
            StackError: this stack was not made by :meth:`from_config`.
            DeployError: ``at_once`` and a new replica did not become healthy (the
                serving ones are untouched).
        """
        spec_for = self._agent_spec_for
        if spec_for is None:
            raise StackError("this stack cannot change its agent's configuration (it was "
                             "not made from a config)")
        with self._lock:
            self.agent_factory = lambda v: spec_for(config, v)
            self._agent_specs.clear()
            self.agent_config = config
        version = version or self.current_version
        if at_once:
            rollout = Rollout(version=version, from_version=self.current_version)
            t0 = time.monotonic()
            self.promote(self.start_standby(version, health_timeout=health_timeout),
                         drain=drain, background=background)
            rollout.seconds = time.monotonic() - t0
            return rollout
        return self.rolling_update(version, force=True, health_timeout=health_timeout)

    def restart_agents(self, *, health_timeout: float | None = None) -> Rollout:
        """Restart every replica one at a time on what it runs (the seed's rolling
        ``restart``)."""
        return self.rolling_update(self.current_version, force=True,
                                   health_timeout=health_timeout)

    def rollback(self, version: str) -> Rollout:
        """Bring every replica back to ``version``, one at a time.

        Raises:
            RollbackError: a replica at ``version`` did not become healthy.
        """
        rollout = self.rolling_update(version)
        if rollout.failure:
            raise RollbackError(f"rollback to {version} failed: {rollout.failure}")
        return rollout

    def scale(self, replicas: int, *, version: str | None = None, drain: bool = True) -> float:
        """Scale the agent to ``replicas`` instances; returns seconds taken. ``drain``
        (scaling in): see :meth:`promote`."""
        if replicas < 1:
            raise StackError("cannot scale the agent below 1 replica")
        t0 = time.monotonic()
        current = self.replicas
        if replicas > len(current):
            svc = self._agent_spec(version or self.current_version)
            used = {r.slot for r in current}
            slots = [s for s in range(replicas + len(current)) if s not in used]
            self._start_replicas(svc, slots[: replicas - len(current)])
            self._sync_routing()
            self._sync_targets()
        elif replicas < len(current):
            keep = current[:replicas]
            drop = current[replicas:]
            with self._lock:
                self._state.replicas = keep
            self._sync_routing()
            self._sync_targets()
            if drain:
                self._drain()
            try:
                self._retire_all(drop)
            finally:  # a failed stop still takes every dropped slot's routes with it
                if self._routes is not None:
                    for r in drop:
                        self._routes.forget_slot(r.instance)
        return time.monotonic() - t0

    def stop_agents(self) -> list[Replica]:
        """Take every replica out of nginx and stop it: the agent is down, nginx answers
        502 (the seed's data-corruption plan: "stop the agent"). :meth:`scale` brings it
        back; each slot keeps its fault-proxy routes meanwhile.

        Returns:
            The replicas stopped (their slots and versions).

        Example:
            >>> stopped = stack.stop_agents()                               # doctest: +SKIP
            >>> stack.scale(len(stopped), version=stopped[0].version)       # doctest: +SKIP
        """
        with self._lock:
            stopped = list(self._state.replicas)
            self._state.replicas = []
        self._sync_routing()
        self._sync_targets()
        self._drain()
        self._retire_all(stopped)
        return stopped

    def kill(self, name: str) -> Handle:
        """SIGKILL one instance (``agent-1``, ``redis`` ...), as a crash would.

        Nothing else changes: nginx still lists a killed replica and the Stack still
        records a killed service as serving, as in production until someone notices;
        :meth:`revive` brings it back.
        """
        handle = self._instance_named(name)
        self.progress(ProgressEvent(handle.name, "stopping", detail="killed"))
        self.backend.kill(handle)
        return handle

    def signal(self, name: str, sig: int) -> Handle:
        """Send ``sig`` to the main process of one instance (``agent-1``, ``redis`` ...):
        e.g. SIGHUP, after its log was rotated, so it reopens the file.

        Raises:
            StackError: no such instance, or it is not running.
        """
        handle = self._instance_named(name)
        self.backend.signal(handle, sig)
        return handle

    def revive(self, name: str, *, health_timeout: float | None = None) -> Handle:
        """Bring a killed (or stopped) instance back: a replica gets a new instance at its
        version, health-gated, and traffic switches to it; a service restarts on its ports
        and data."""
        for replica in self.replicas:
            if replica.instance == name:
                return self.replace_replica(replica, replica.version,
                                            health_timeout=health_timeout).handle
        self._instance_named(name)
        return self.restart(name)

    def _instance_named(self, name: str) -> Handle:
        for replica in self.replicas:
            if replica.instance == name:
                return replica.handle
        return self.service(name)

    def restart(self, name: str) -> Handle:
        """Restart a (non-agent) service in place, keeping its ports and data."""
        old = self.service(name)
        peers = self._peers()
        with self._lock:  # not serving while it is down
            self._state.services.pop(name, None)
        self.progress(ProgressEvent(old.name, "stopping", detail="restart"))
        return self._start_again(name, old, peers, None)

    def replace_data(self, name: str, populate: Callable[[Path], None], *,
                     timeout: float | None = None) -> Handle:
        """Replace a service's data: stop it, let ``populate`` fill an empty data
        directory, start it again on the same ports and wait until it is ready.

        While it is down the service is not serving (:meth:`service` raises for it).
        The previous data is kept aside until ``populate`` returns; if anything before
        the new start fails, it is put back, the service starts on it again and the
        error propagates. The data directory is a host path on every backend; what
        ``populate`` writes is made readable by everyone, so a container's user reads it.

        Args:
            name: a running non-agent service (e.g. ``redis``).
            populate: writes the new data into the (empty) directory it is given.
            timeout: readiness deadline in seconds (default: the service's own).

        Returns:
            The new serving instance.

        Raises:
            StackError: ``name`` is not running, or did not become ready again.

        Example:
            >>> stack.replace_data("redis", lambda d: shutil.copy(rdb, d / "dump.rdb"))  # doctest: +SKIP
        """
        old = self.service(name)
        peers = self._peers()
        data = Path(self.backend.volume_path(old))
        with self._lock:
            self._state.services.pop(name, None)
        self.progress(ProgressEvent(old.name, "stopping", detail="replace data"))
        self.backend.stop(old)

        def set_aside(directory: Path) -> Path:
            # renames only: a container's root-owned files need no deleting to move
            aside = Path(tempfile.mkdtemp(prefix=f".{data.name}.", dir=data.parent))
            try:
                os.replace(directory, aside)
            except OSError:
                aside.rmdir()
                raise
            return aside

        previous: Path | None = None
        try:
            previous = set_aside(data)
            data.mkdir()
            data.chmod(previous.stat().st_mode & 0o7777)
            populate(data)
            _readable(data)
        except BaseException:
            if previous is not None:  # back on its previous data rather than left stopped
                failed = set_aside(data) if data.exists() else None
                os.replace(previous, data)
                if failed is not None:
                    shutil.rmtree(failed, ignore_errors=True)
            self._start_again(name, old, peers, timeout)
            raise
        shutil.rmtree(previous, ignore_errors=True)
        return self._start_again(name, old, peers, timeout)

    def _start_again(self, name: str, old: Handle, peers: Mapping[str, Handle],
                     timeout: float | None) -> Handle:
        """``old`` (stopped) started again on its ports; serving once it is ready."""
        handle = self.backend.restart(old, peers=peers)
        with self._lock:
            self._state.started = [h for h in self._state.started if h is not old] + [handle]
        if handle.spec.health is not None:
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                handle.spec.health.wait_until_ready(handle, deadline=deadline)
            except StackError as exc:
                self.progress(ProgressEvent(handle.name, "failed", detail=str(exc).splitlines()[0]))
                raise type(exc)(self.redactor(str(exc))) from None
        with self._lock:
            self._state.services[name] = handle
        self.progress(ProgressEvent(handle.name, "ready"))
        return handle

    def timings(self) -> dict[str, float]:
        """Instance -> seconds from start to ready, for every instance that got ready."""
        out = {h.name: h.ready_seconds for h in self.instances() if h.ready_seconds is not None}
        with self._lock:
            out.update(self._job_seconds)
        return out


def reap_leftovers(backends: Iterable[Backend], state_dir: Path | None = None) -> list[str]:
    """Remove what runs killed without teardown left behind; return descriptions.

    Recorded processes (any backend's services, load generators) are reaped from the run
    records; then each backend removes what only it can find (containers by label).
    """
    reaped = reap_stale_runs(state_dir)
    for backend in backends:
        reaped += backend.reap_stale()
    return reaped


class _Skipped(StackError):
    """A service was not started because a dependency failed (not the root cause)."""
