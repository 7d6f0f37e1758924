"""What runs: backend-neutral descriptions of the stack's services.

A :class:`ServiceSpec` says *what* a service is (role, image, command, ports, env,
readiness, dependencies, replicas); a backend decides *how* it runs. Strings in
``command``, ``env`` and ``files`` may hold placeholders (``${port:NAME}``,
``${addr:SVC}`` ..., listed in :mod:`agentverify.stack.placeholders`) each backend
resolves for itself, so one spec runs as a local process and as a container.

:func:`build_stack_spec` turns a :class:`~agentverify.config.Config` into the seed's
stack: llm, redis, milvus, the knowledge-ingest job, N agent replicas, nginx, the
webhook receiver, prometheus and alertmanager.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import yaml

from agentverify.config import Config, deep_merge
from agentverify.errors import ConfigError
from agentverify.monitoring.render import (
    alert_rules_test_yaml,
    alert_rules_yaml,
    alertmanager_yml,
    check_rendered,
    prometheus_yml,
)
from agentverify.stack.placeholders import expand_user_template
from agentverify.stack.wait import (
    HttpWaitStrategy,
    PortWaitStrategy,
    WaitStrategy,
)
from agentverify.traffic import nginx_conf

__all__ = [
    "AGENT_LOG_NAME",
    "DEFAULT_IMAGES",
    "Port",
    "ServiceSpec",
    "StackSpec",
    "agent_config_yaml",
    "agent_environment",
    "agent_keys",
    "agent_spec",
    "build_stack_spec",
    "default_images",
    "ingest_spec",
    "required_variables",
    "ROLE_AGENT",
    "ROLE_LB",
    "ROLE_METRICS",
    "ROLE_RECEIVER",
]

#: the agent's request log in each replica's data directory (``stack.agent.variables.log_file``)
AGENT_LOG_NAME = "agent.log"

ROLE_AGENT = "agent"
ROLE_LB = "lb"
ROLE_METRICS = "metrics"
ROLE_ALERTS = "alerts"
ROLE_CACHE = "cache"
ROLE_VECTOR = "vector_store"
ROLE_LLM = "llm"
ROLE_JOB = "job"
ROLE_FAULTS = "faults"
ROLE_RECEIVER = "receiver"

@dataclass(frozen=True)
class Port:
    """A port a service listens on inside its own network namespace."""

    name: str
    port: int
    scheme: str = "http"


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the stack, independent of how it runs.

    Example:
        >>> ServiceSpec(name="redis", role="cache", image="redis:7",
        ...             command=("redis-server", "--port", "${port:redis}"),
        ...             ports=(Port("redis", 6379, "redis"),))   # doctest: +ELLIPSIS
        ServiceSpec(name='redis', role='cache', ...)
    """

    name: str
    role: str
    image: str
    command: tuple[str, ...]
    ports: tuple[Port, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    health: WaitStrategy | None = None
    depends_on: tuple[str, ...] = ()
    replicas: int = 1
    kind: Literal["service", "job"] = "service"
    files: Mapping[str, str] = field(default_factory=dict)
    #: env keys whose values are secrets: never printed, logged or reported
    secret_env: frozenset[str] = frozenset()
    #: binaries the local backend needs on PATH, with the package that provides them
    requires: Mapping[str, str] = field(default_factory=dict)
    stop_grace: float = 10.0
    cpus: float | None = None
    memory: str | None = None
    cpu_reservation: float | None = None
    memory_reservation: str | None = None
    version: str | None = None
    persistent: bool = False
    #: which program provides the service when there is a choice (the fault proxy)
    implementation: str | None = None
    #: variables that carry a replica's own id (``agent-N``), set by :meth:`for_replica`
    replica_env: tuple[str, ...] = ()

    def port(self, name: str | None = None) -> Port:
        if not self.ports:
            raise KeyError(f"{self.name} declares no ports")
        if name is None:
            return self.ports[0]
        for p in self.ports:
            if p.name == name:
                return p
        raise KeyError(f"{self.name} has no port named {name!r}")

    def with_files(self, **files: str) -> ServiceSpec:
        return replace(self, files={**self.files, **files})

    def with_env(self, **env: str) -> ServiceSpec:
        return replace(self, env={**self.env, **env})

    def for_replica(self, instance: str) -> ServiceSpec:
        """This spec for one replica: every :attr:`replica_env` variable set to
        ``instance`` (``agent-0`` ...)."""
        return self.with_env(**{name: instance for name in self.replica_env})

    def __repr__(self) -> str:  # never show secret values
        env = {k: ("***" if k in self.secret_env else v) for k, v in self.env.items()}
        return (f"ServiceSpec(name={self.name!r}, role={self.role!r}, image={self.image!r}, "
                f"ports={[p.name for p in self.ports]}, replicas={self.replicas}, env={env})")


@dataclass(frozen=True)
class StackSpec:
    """The whole stack: services in dependency order."""

    services: tuple[ServiceSpec, ...]
    env_name: str = "dev"

    def __post_init__(self) -> None:
        names = [s.name for s in self.services]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ConfigError(f"duplicate service names {sorted(dupes)}", source="stack")
        for s in self.services:
            for dep in s.depends_on:
                if dep not in names:
                    raise ConfigError(f"{s.name} depends on unknown service {dep!r}",
                                      source="stack")

    def __getitem__(self, name: str) -> ServiceSpec:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    def subset(self, names: tuple[str, ...] | list[str]) -> StackSpec:
        """Only the services ``names`` and what they depend on (e.g. a stack of Redis and
        Milvus alone, to restore a backup into)."""
        keep: set[str] = set()

        def add(name: str) -> None:
            if name in keep:
                return
            keep.add(name)
            for dep in self[name].depends_on:
                add(dep)

        for name in names:
            add(name)
        return StackSpec(services=tuple(s for s in self.services if s.name in keep),
                         env_name=self.env_name)

    def without_jobs(self) -> StackSpec:
        """The stack without its one-off jobs, and nothing waiting for them (a stack to
        restore a backup into takes its data from the archive, not from the ingest)."""
        jobs = {s.name for s in self.services if s.kind == "job"}
        return StackSpec(services=tuple(
            replace(s, depends_on=tuple(d for d in s.depends_on if d not in jobs))
            for s in self.services if s.name not in jobs), env_name=self.env_name)

    def by_role(self, role: str) -> list[ServiceSpec]:
        return [s for s in self.services if s.role == role]

    def order(self) -> list[ServiceSpec]:
        """Topological order (raises on a dependency cycle)."""
        done: list[ServiceSpec] = []
        seen: set[str] = set()
        visiting: set[str] = set()

        def visit(s: ServiceSpec) -> None:
            if s.name in seen:
                return
            if s.name in visiting:
                raise ConfigError(f"dependency cycle through {s.name!r}", source="stack")
            visiting.add(s.name)
            for dep in s.depends_on:
                visit(self[dep])
            visiting.discard(s.name)
            seen.add(s.name)
            done.append(s)

        for s in self.services:
            visit(s)
        return done

    def stop_ranks(self) -> dict[str, int]:
        """Service name -> its rank at teardown: 1 for what an agent uses, directly or
        through other services (its proxies, cache, vector store, LLM), 0 for the rest.

        Rank 0 stops first, all at once: the agents, and beside them what only routes to
        or watches them (load balancer, Prometheus, Alertmanager, receiver), whose own
        shutdown needs no peer; then rank 1, at once. The agent is the user's code: its
        shutdown (a flush to its cache, a call to the LLM it finishes) still finds
        everything it uses. Two rounds of stops, not one per level of the graph.
        """
        used: set[str] = set()

        def add(name: str) -> None:
            for dep in self[name].depends_on:
                if dep not in used:
                    used.add(dep)
                    add(dep)

        for agent in self.by_role(ROLE_AGENT):
            add(agent.name)
        return {s.name: 1 if s.name in used else 0 for s in self.services}


# ------------------------------------------------------------------------------ the seed


#: the image of each role, as ``agentverify/<repo>``; the tag is ``stack.image_tag``
DEFAULT_REPOS = {
    # Built offline by `agentverify images build`; any name can be overridden in config
    # (stack.images.ROLE), e.g. redis: "redis:7-alpine" for an online user.
    "redis": "agentverify/redis",
    "milvus": "agentverify/python",
    "llm": "agentverify/python",
    "agent": "agentverify/python",
    "ingest": "agentverify/python",
    "lb": "agentverify/nginx",
    "toxiproxy": "agentverify/python",
    "receiver": "agentverify/python",
    "prometheus": "agentverify/prometheus",
    "alertmanager": "agentverify/prometheus",
}
#: the agent's image when it is built from ``stack.agent.source``
SOURCE_AGENT_REPO = "agentverify/agent"
#: the default names with the default tag (``agentverify/redis:local`` ...)
DEFAULT_IMAGES = {role: f"{repo}:local" for role, repo in DEFAULT_REPOS.items()}


def default_images(config: Config) -> dict[str, str]:
    """Role -> image name before ``stack.images``: ``agentverify/*:<stack.image_tag>``,
    and the agent (and its ingest job) built from ``stack.agent.source`` when given."""
    tag = config.stack.image_tag
    names = {role: f"{repo}:{tag}" for role, repo in DEFAULT_REPOS.items()}
    if config.stack.agent.source:
        names["agent"] = f"{SOURCE_AGENT_REPO}:{tag}"
        if config.stack.agent.ingest:
            names["ingest"] = names["agent"]
    return names


def _image(config: Config, key: str) -> str:
    return config.stack.images.get(key) or default_images(config)[key]


def agent_config_yaml(config: Config) -> str:
    """The seed-format config.yaml the deploy step writes for the agent, with
    ``stack.agent.config`` (keys only the agent knows) merged in.

    Endpoints are placeholders, resolved per backend to the live services.
    """
    data = config.seed_dict()
    data["vector_store"]["host"] = "${host:milvus}"
    data["vector_store"]["port"] = "${port:milvus:grpc}"
    data["cache"]["url"] = "redis://${addr:redis}/0"
    if not config.model.base_url:
        data["model"]["base_url"] = "${url:llm}/v1"
    if not config.model.backup.base_url:
        data["model"]["backup"]["base_url"] = "${url:llm}/v1"
    if config.stack.agent.config:
        data = deep_merge(data, config.stack.agent.config)
    return yaml.safe_dump(data, sort_keys=False)


def agent_environment(config: Config, *, version: str,
                      api_keys: Mapping[str, str]) -> dict[str, str]:
    """The variables the agent at ``version`` is given (``stack.agent.variables`` names
    them; values are placeholders for the live stack). The replica's own id is added per
    instance (:meth:`ServiceSpec.for_replica`).

    Example:
        >>> from agentverify.config import load_config
        >>> env = agent_environment(load_config(), version="v2", api_keys={})
        >>> env["AGENT_VERSION"], env["MILVUS_URI"], env["PORT"]
        ('v2', '${url:milvus:grpc}', '${port:http}')
    """
    agent = config.stack.agent
    names = agent.variables
    knobs = config.stack.version_knobs(version)
    model = config.model
    env: dict[str, str] = {}

    def give(key: str, value: str | None) -> None:
        name = getattr(names, key)
        if name and value is not None:
            env[name] = value

    give("environment", config.environment)
    give("config", "${confdir}/config.yaml")
    give("version", version)
    # the knobs of the reference agent's broken-on-purpose versions (others ignore them)
    env.update({"AGENT_FAIL_HEALTH": "1" if knobs.fail_health else "0",
                "AGENT_ERROR_RATE": str(knobs.error_rate),
                "AGENT_LATENCY_MS": str(knobs.latency_ms),
                "AGENT_HEALTH_IGNORE": ",".join(knobs.health_ignores),
                "AGENT_CACHE_REQUIRED": "1" if knobs.cache_required else "0",
                "AGENT_CACHE_NO_TTL": "1" if knobs.cache_without_ttl else "0",
                "AGENT_DROP_MAX_TOKENS": "1" if knobs.drop_max_tokens else "0"})
    # the seed's required variables (validated by the deploy rehearsal), and the URI form
    give("milvus_host", "${host:milvus}")
    give("milvus_port", "${port:milvus:grpc}")
    give("milvus_uri", "${url:milvus:grpc}")
    give("redis_url", "redis://${addr:redis}/0")
    give("openai_base_url", model.base_url or "${url:llm}/v1")
    give("openai_backup_base_url", model.backup.base_url or "${url:llm}/v1")
    give("model", model.model_name)
    give("host", "${bind}")
    give("port", "${port:http}")
    give("log_file", "${datadir}/" + AGENT_LOG_NAME)
    values = {"version": version}
    env.update({k: expand_user_template(v, values) for k, v in agent.env.items()})
    env.update({k: expand_user_template(v, values) for k, v in knobs.env.items()})
    env.update(agent_keys(config, api_keys))
    return env


def agent_keys(config: Config, api_keys: Mapping[str, str]) -> dict[str, str]:
    """The API-key variables the agent gets: each key under its own name
    (``model.api_key_env`` ...) and under the names ``stack.agent.variables`` gives —
    ``openai_api_key`` carries the key of the model in use, so an agent that reads one
    fixed name follows a switch to the backup model."""
    out = dict(api_keys)
    names = config.stack.agent.variables
    for var, source in ((names.openai_api_key, config.model.api_key_env),
                        (names.openai_backup_api_key, config.model.backup.api_key_env)):
        if var and source in api_keys:
            out[var] = api_keys[source]
    return out


def required_variables(config: Config) -> list[str]:
    """What the seed's deploy validates the agent's environment for: the API key, the
    vector store (``MILVUS_HOST``, else ``MILVUS_URI``) and the cache, by this agent's
    names."""
    names = config.stack.agent.variables
    milvus = names.milvus_host or names.milvus_uri
    return [n for n in (names.openai_api_key or config.model.api_key_env, milvus,
                        names.redis_url) if n]


def _agent_command(config: Config, version: str) -> tuple[str, ...]:
    agent = config.stack.agent
    if agent.command is not None:
        return tuple(expand_user_template(a, {"version": version}) for a in agent.command)
    return ("${python}", "-m", "uvicorn", agent.app,
            "--host", "${bind}", "--port", "${port:http}",
            "--workers", str(agent.workers),
            "--no-access-log", "--timeout-graceful-shutdown", "10",
            "--log-level", "warning")


def agent_spec(config: Config, *, version: str, api_key_env: Mapping[str, str]) -> ServiceSpec:
    """The agent service at one version (the Stack makes one instance per replica)."""
    knobs = config.stack.version_knobs(version)
    agent = config.stack.agent
    keys = agent_keys(config, api_key_env)
    return ServiceSpec(
        name="agent",
        role=ROLE_AGENT,
        image=knobs.image or _image(config, "agent"),
        command=_agent_command(config, version),
        ports=(Port("http", agent.port),),
        env=agent_environment(config, version=version, api_keys=api_key_env),
        health=HttpWaitStrategy("http", agent.contract.health_path).with_timeout(
            config.stack.start_timeout),
        # not on the ingest job: replicas start while the knowledge is loaded (their
        # health check waits for the collection), and the load balancer waits for both
        depends_on=("redis", "milvus", "llm",
                    *(("toxiproxy",) if config.stack.faults.enabled else ())),
        replicas=config.stack.replicas,
        files={"config.yaml": agent_config_yaml(config)},
        secret_env=frozenset(keys),
        requires={},
        stop_grace=15.0,
        cpus=config.stack.resources.limits.cpus,
        memory=config.stack.resources.limits.memory,
        cpu_reservation=config.stack.resources.reservations.cpus,
        memory_reservation=config.stack.resources.reservations.memory,
        version=version,
        replica_env=(agent.variables.replica,) if agent.variables.replica else (),
    )


def ingest_spec(config: Config, *, api_keys: Mapping[str, str]) -> ServiceSpec:
    """The one-shot job that loads ``stack.knowledge_dir`` into Milvus: the agent's own
    (``stack.agent.ingest``, run with the agent's image and variables) or ours."""
    agent = config.stack.agent
    files = {"config.yaml": agent_config_yaml(config), **_knowledge_files(config)}
    if agent.ingest is not None:
        version = config.stack.version
        env = agent_environment(config, version=version, api_keys=api_keys)
        for key in ("host", "port", "log_file"):  # a job listens on nothing, logs no request
            env.pop(getattr(agent.variables, key) or "", None)
        knobs = config.stack.version_knobs(version)
        return ServiceSpec(
            name="ingest", role=ROLE_JOB, kind="job",
            image=config.stack.images.get("ingest") or knobs.image or _image(config, "agent"),
            command=tuple(expand_user_template(a, {"version": version}) for a in agent.ingest),
            env=env, secret_env=frozenset(agent_keys(config, api_keys)),
            depends_on=("redis", "milvus", "llm"), files=files)
    ingest_key = {config.model.api_key_env: api_keys[config.model.api_key_env]}
    return ServiceSpec(
        name="ingest", role=ROLE_JOB, kind="job", image=_image(config, "ingest"),
        command=("${python}", "-m", "agentverify.reference_agent.ingest",
                 "--config", "${confdir}/config.yaml", "--knowledge", "${confdir}/knowledge"),
        env={"OPENAI_BASE_URL": config.model.base_url or "${url:llm}/v1", **ingest_key},
        secret_env=frozenset(ingest_key),
        depends_on=("milvus", "llm"),
        files=files,
    )


def _knowledge_files(config: Config) -> dict[str, str]:
    kdir = config.path(config.stack.knowledge_dir)
    if not kdir.is_dir():
        raise ConfigError(f"directory not found: {kdir}", source=config.source,
                          key="stack.knowledge_dir")
    files = {}
    for p in sorted(kdir.iterdir()):
        if p.is_file() and p.suffix in {".md", ".txt"}:
            files[f"knowledge/{p.name}"] = p.read_text(encoding="utf-8")
    if not files:
        raise ConfigError(f"no .md or .txt documents in {kdir}", source=config.source,
                          key="stack.knowledge_dir")
    return files


def fault_proxy_spec(config: Config, backend: str) -> ServiceSpec:
    """The fault proxy: a real Toxiproxy when there is one, else the built-in server.

    In order of preference: ``toxiproxy-server`` on PATH (local backend) or the image
    ``stack.images.toxiproxy`` (docker backend, e.g. ``ghcr.io/shopify/toxiproxy:2.12.0``);
    else ``python -m agentverify.faults.server``, which speaks the same API. ``proxy:
    builtin`` / ``toxiproxy`` in ``stack.faults`` forces one (a missing real one is then
    an error at start, naming what to install).
    """
    choice = config.stack.faults.proxy
    image = config.stack.images.get("toxiproxy")
    real_local = backend == "local" and shutil.which("toxiproxy-server") is not None
    real_image = backend != "local" and image is not None
    use_real = choice == "toxiproxy" or (choice == "auto" and (real_local or real_image))
    ports = (Port("api", 8474), Port("lb", 8666))
    common = dict(name="toxiproxy", role=ROLE_FAULTS, ports=ports,
                  health=HttpWaitStrategy("api", "/version").with_timeout(
                      config.stack.start_timeout), depends_on=("redis", "milvus", "llm"),
                  stop_grace=3.0)
    if use_real and backend != "local":
        if image is None:
            raise ConfigError("stack.faults.proxy is toxiproxy: name its image in "
                              "stack.images.toxiproxy (e.g. ghcr.io/shopify/toxiproxy:2.12.0)",
                              source=config.source, key="stack.images.toxiproxy")
        # the Toxiproxy image's entrypoint is the server: these are its arguments
        return ServiceSpec(image=image, command=("-host=${bind}", "-port=${port:api}"),
                           implementation=f"toxiproxy image {image}", **common)
    if use_real:
        return ServiceSpec(image=_image(config, "toxiproxy"),
                           command=("toxiproxy-server", "-host", "${bind}", "-port",
                                    "${port:api}"),
                           requires={"toxiproxy-server": "toxiproxy (github.com/Shopify/toxiproxy)"},
                           implementation="toxiproxy-server", **common)
    return ServiceSpec(image=_image(config, "toxiproxy"),
                       command=("${python}", "-m", "agentverify.faults.server", "--host",
                                "${bind}", "--port", "${port:api}"),
                       implementation="builtin", **common)


def build_stack_spec(config: Config, *, api_keys: Mapping[str, str],
                     backend: str = "local") -> StackSpec:
    """The seed's stack for one environment.

    Args:
        config: the resolved configuration.
        api_keys: env var name -> secret value for the LLM keys (never logged).
        backend: the backend it will run on (which fault proxy exists there).
    """
    start_timeout = config.stack.start_timeout
    llm = ServiceSpec(
        name="llm", role=ROLE_LLM, image=_image(config, "llm"),
        command=("${python}", "-m", "uvicorn", "agentverify.llm_stub.app:app",
                 "--host", "${bind}", "--port", "${port:http}", "--no-access-log",
                 # a request held by a `hang` fault must not hold teardown for minutes
                 "--timeout-graceful-shutdown", "2", "--log-level", "warning"),
        ports=(Port("http", 8080),),
        env={"LLM_STUB_API_KEYS": ",".join(api_keys.values())},
        secret_env=frozenset({"LLM_STUB_API_KEYS"}),
        health=HttpWaitStrategy("http", "/health").with_timeout(start_timeout),
    )
    redis = ServiceSpec(
        name="redis", role=ROLE_CACHE, image=_image(config, "redis"),
        command=("redis-server", "--port", "${port:redis}", "--bind", "${bind}",
                 "--dir", "${datadir}", "--dbfilename", "dump.rdb", "--save", "",
                 "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no"),
        ports=(Port("redis", 6379, "redis"),),
        health=PortWaitStrategy("redis").with_timeout(start_timeout),
        requires={"redis-server": "redis-server"},
        persistent=True,
    )
    milvus = ServiceSpec(
        name="milvus", role=ROLE_VECTOR, image=_image(config, "milvus"),
        command=("${python}", "-m", "milvus_lite", "server", "--data-dir", "${datadir}",
                 "--host", "${bind}", "--port", "${port:grpc}"),
        ports=(Port("grpc", 19530, "http"),),
        health=PortWaitStrategy("grpc").with_timeout(start_timeout),
        persistent=True,
    )
    ingest = ingest_spec(config, api_keys=api_keys)
    agent = agent_spec(config, version=config.stack.version, api_key_env=api_keys)
    lb = ServiceSpec(
        name="lb", role=ROLE_LB, image=_image(config, "lb"),
        command=("nginx", "-e", "stderr", "-p", "${datadir}", "-c", "${confdir}/nginx.conf"),
        ports=(Port("http", 80),),
        health=HttpWaitStrategy("http", "/nginx-health").with_timeout(start_timeout),
        depends_on=("agent", "ingest"),
        files={"nginx.conf": nginx_conf(config.stack.lb.retries)},
        requires={"nginx": "nginx-light"},
        stop_grace=5.0,
    )
    services = [llm, redis, milvus, ingest, agent, lb]
    if config.stack.faults.enabled:
        services.insert(3, fault_proxy_spec(config, backend))
    # the rehearsal's "team": every Alertmanager webhook and runbook notification lands here
    services.append(ServiceSpec(
        name="receiver", role=ROLE_RECEIVER, image=_image(config, "receiver"),
        command=("${python}", "-m", "agentverify.drills.receiver", "--host", "${bind}",
                 "--port", "${port:http}"),
        ports=(Port("http", 9095),),
        health=HttpWaitStrategy("http", "/health").with_timeout(start_timeout),
        stop_grace=3.0,
    ))
    rules = alert_rules_yaml(config)
    prometheus_file = prometheus_yml(config, alertmanager=config.stack.alertmanager)
    alertmanager_file = alertmanager_yml(config, backend=backend) if config.stack.alertmanager \
        else None
    # promtool / amtool judge every rendering (when installed): a broken rule or route is
    # one ConfigError here, not a Prometheus that will not start or never alerts
    check_rendered(config, rules=rules, prometheus=prometheus_file, alertmanager=alertmanager_file)
    if alertmanager_file is not None:
        services.append(ServiceSpec(
            name="alertmanager", role=ROLE_ALERTS, image=_image(config, "alertmanager"),
            command=("prometheus-alertmanager", "--config.file=${confdir}/alertmanager.yml",
                     "--storage.path=${datadir}",
                     "--web.listen-address=${bind}:${port:http}",
                     # clustering would bind 0.0.0.0:9094; a single instance needs none
                     "--cluster.listen-address="),
            ports=(Port("http", 9093),),
            health=HttpWaitStrategy("http", "/-/ready").with_timeout(start_timeout),
            depends_on=("receiver",),
            files={"alertmanager.yml": alertmanager_file},
            requires={"prometheus-alertmanager": "prometheus-alertmanager"},
        ))
    services.append(ServiceSpec(
        name="prometheus", role=ROLE_METRICS, image=_image(config, "prometheus"),
        command=("prometheus", "--config.file=${confdir}/prometheus.yml",
                 "--storage.tsdb.path=${datadir}",
                 "--web.listen-address=${bind}:${port:http}",
                 "--web.enable-lifecycle", "--log.level=warn",
                 # the default (1m) delays the first notification of a drill by a minute
                 f"--rules.alert.resend-delay={config.monitoring.evaluation_interval}"),
        ports=(Port("http", 9090),),
        health=HttpWaitStrategy("http", "/-/ready").with_timeout(start_timeout),
        depends_on=("llm", "receiver", *(("alertmanager",) if config.stack.alertmanager else ())),
        files={"prometheus.yml": prometheus_file,
               "alert_rules.yml": rules,
               # beside the rules, as promtool test rules expects (alert_rules_test step)
               "alert_rules_test.yml": alert_rules_test_yaml(config),
               "targets/agents.json": "[]"},
        requires={"prometheus": "prometheus"},
        stop_grace=5.0,
        persistent=True,
    ))
    return StackSpec(services=tuple(services), env_name=config.environment)

