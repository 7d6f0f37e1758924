"""Render the seed's stack as a docker-compose file, for users who deploy with compose.

``agentverify compose --env production`` writes ``compose/docker-compose.yml`` (format
"3.8", as in the seed) and, next to it, every config file the services mount:
``prometheus.yml``, ``alert_rules.yml``, ``alertmanager.yml``, ``nginx.conf`` +
``upstream.conf``, ``agent-config.yaml``, Grafana's provisioning and its dashboard
``grafana/agent.json`` (a copy of the one the package ships). The rendering is
the same :class:`~agentverify.stack.spec.StackSpec` the backends run, with placeholders
resolved the compose way: peers by their service DNS name on ``ai-agent-network`` and
their container port, files mounted at ``/agentverify/conf``, data in named volumes
(``redis_data`` ...) or a tmpfs at ``/agentverify/data``.

Secrets never reach the file: API keys are ``${OPENAI_API_KEY}`` references that compose
fills from the environment. Ports are published on 127.0.0.1 only.

Agent replicas are scraped with ``dns_sd_configs`` on the name ``agent``: without swarm
(compose v1, or v2 without ``deploy`` mode swarm) Docker's embedded DNS answers the
service name with one A record per container, so ``docker-compose up --scale agent=N``
is followed by Prometheus within ``refresh_interval`` with no re-rendering; swarm's
``tasks.agent`` does not exist there, and static targets would go stale on every scale.
nginx resolves ``agent`` when it (re)loads, so after scaling run
``docker-compose exec lb nginx -p /agentverify/data -c /agentverify/conf/nginx.conf -s
reload`` (the seed's "switch traffic" step).

The command (``agentverify compose``) is in :mod:`agentverify.cli`.

Example:
    >>> files = render_compose_files(compose_spec(config), config)  # doctest: +SKIP
    >>> sorted(files)[:2]                                           # doctest: +SKIP
    ['agent-config.yaml', 'alert_rules.yml']
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from agentverify.config import Config
from agentverify.errors import StackError
from agentverify.stack.placeholders import CONF_DIR, DATA_DIR, container_resolver, render_template
from agentverify.stack.spec import (
    ROLE_AGENT,
    ROLE_LB,
    ROLE_METRICS,
    ServiceSpec,
    StackSpec,
    build_stack_spec,
)

__all__ = ["COMPOSE_VERSION", "DEFAULT_OUTPUT", "NETWORK", "api_key_references", "compose_spec",
           "render_compose", "render_compose_files", "write_compose"]

COMPOSE_VERSION = "3.8"
NETWORK = "ai-agent-network"
DEFAULT_OUTPUT = "compose/docker-compose.yml"
HEADER = """\
# Rendered by `agentverify compose --env {env}` from agentverify.yaml: do not edit by hand,
# re-render (a unit test fails when this file and a fresh rendering differ).
# The seed's stack: llm, redis, milvus, ingest (one-shot), agent x{replicas}, lb (nginx),
# prometheus, alertmanager and grafana on one network, ports on 127.0.0.1 only.
# Images: `agentverify images build` makes the agentverify/* ones without a registry.
# API keys come from the environment (export OPENAI_API_KEY ...), never from this file.
# `deploy:` (replicas, resources) is honoured by `docker compose` v2 and by
# `docker-compose --compatibility up` (v1).
"""
#: the named volumes of the seed, by the service whose data directory they hold
VOLUMES = {"redis": "redis_data", "milvus": "milvus_data", "prometheus": "prometheus_data"}
#: a value made only of ``${VAR}`` references (comma-separated): safe to write
_REF = re.compile(r"^(\$\{[A-Za-z_][A-Za-z0-9_]*\})(,\$\{[A-Za-z_][A-Za-z0-9_]*\})*$")


def api_key_references(config: Config) -> dict[str, str]:
    """API key variable -> ``${VARIABLE}``: what the compose file holds instead of keys."""
    names = [config.model.api_key_env, config.model.backup.api_key_env]
    return {name: "${%s}" % name for name in names}


def compose_spec(config: Config) -> StackSpec:
    """The stack as compose renders it: keys are references, never values, and no fault
    proxy (a deployment wires its agents to their dependencies directly)."""
    from agentverify.config import with_overrides

    direct = with_overrides(config, {"stack.faults.enabled": False}, source="compose")
    return build_stack_spec(direct, api_keys=api_key_references(config), backend="docker")


def _published(config: Config) -> dict[str, int]:
    """Service -> host port on 127.0.0.1: the seed's ports, plus the load balancer on the
    seed's agent port 8000 (replicas are reached through it) and the alert UI."""
    return {"lb": 8000, "redis": 6379, "milvus": 19530, "llm": 8080,
            "alertmanager": 9093, "prometheus": config.monitoring.prometheus_port}


def _escape(value: str) -> str:
    """compose interpolates ``$``: a literal dollar is ``$$``."""
    return value.replace("$", "$$")


def _conf_name(relpath: str) -> str:
    """Where a service's rendered file lives next to the compose file."""
    if relpath == "config.yaml":
        return "agent-config.yaml"  # the agent's and the ingest job's (same content)
    return relpath


def _resolver(spec: ServiceSpec, stack: StackSpec) -> Any:
    def lookup(service: str, port: str | None) -> tuple[str, int, str]:
        p = stack[service].port(port)
        return service, p.port, p.scheme

    return container_resolver(spec, lookup)


def _render(spec: ServiceSpec, stack: StackSpec, text: str) -> str:
    return render_template(text, _resolver(spec, stack))


def _environment(spec: ServiceSpec, stack: StackSpec) -> dict[str, str]:
    env: dict[str, str] = {}
    for key, value in spec.env.items():
        if key in spec.secret_env:
            # only ${VAR} references may stand for a secret; anything else is masked
            env[key] = value if _REF.match(value) else "${%s}" % key
        else:
            env[key] = _escape(_render(spec, stack, value))
    return env


def _healthcheck(spec: ServiceSpec) -> dict[str, Any] | None:
    """The spec's readiness as a compose healthcheck (our images carry python3)."""
    health = spec.health
    if health is None or not spec.image.startswith("agentverify/"):
        return None
    port = spec.port(getattr(health, "port", None)).port
    path = getattr(health, "path", None)
    if path is not None:
        probe = ("import urllib.request; urllib.request.urlopen("
                 f"'http://127.0.0.1:{port}{path}', timeout=2)")
    else:
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2)"
    return {"test": ["CMD", "python3", "-c", probe], "interval": "5s", "timeout": "3s",
            "retries": 12}


def _fmt_cpus(cpus: float) -> str:
    return f"{cpus:g}"


def _service(spec: ServiceSpec, stack: StackSpec, config: Config,
             knowledge: str) -> dict[str, Any]:
    svc: dict[str, Any] = {"image": spec.image,
                           "command": [_escape(_render(spec, stack, a)) for a in spec.command]}
    env = _environment(spec, stack)
    if env:
        svc["environment"] = env
    published = _published(config)
    if spec.name in published and spec.ports:
        svc["ports"] = [f"127.0.0.1:{published[spec.name]}:{spec.port().port}"]
    volumes: list[str] = []
    mounted_knowledge = False
    for relpath in spec.files:
        if relpath.startswith("targets/"):
            continue  # Prometheus finds the replicas through DNS instead (module docs)
        if relpath.startswith("knowledge/"):
            if not mounted_knowledge:
                volumes.append(f"{knowledge}:{CONF_DIR}/knowledge:ro")
                mounted_knowledge = True
            continue
        volumes.append(f"./{_conf_name(relpath)}:{CONF_DIR}/{relpath}:ro")
    if spec.role == ROLE_LB:
        volumes.append(f"./upstream.conf:{CONF_DIR}/upstream.conf:ro")
    if spec.name in VOLUMES:
        volumes.append(f"{VOLUMES[spec.name]}:{DATA_DIR}")
    else:
        svc["tmpfs"] = [DATA_DIR]
    if volumes:
        svc["volumes"] = volumes
    svc["working_dir"] = DATA_DIR
    if spec.depends_on:
        svc["depends_on"] = list(spec.depends_on)
    health = _healthcheck(spec)
    if health:
        svc["healthcheck"] = health
    if spec.role == ROLE_AGENT:
        res = config.stack.resources
        svc["deploy"] = {
            "replicas": config.stack.replicas,
            "resources": {
                "limits": {"cpus": _fmt_cpus(res.limits.cpus), "memory": res.limits.memory},
                "reservations": {"cpus": _fmt_cpus(res.reservations.cpus),
                                 "memory": res.reservations.memory},
            },
        }
    svc["restart"] = "on-failure" if spec.kind == "job" else "unless-stopped"
    svc["init"] = True
    svc["networks"] = [NETWORK]
    return svc


def _grafana(config: Config) -> dict[str, Any]:
    return {
        "image": "grafana/grafana:latest",
        "ports": [f"127.0.0.1:{config.monitoring.grafana_port}:3000"],
        "volumes": ["grafana_data:/var/lib/grafana",
                    "./grafana/provisioning:/etc/grafana/provisioning:ro",
                    "./grafana/agent.json:/var/lib/grafana/dashboards/agent.json:ro"],
        "depends_on": ["prometheus"],
        "restart": "unless-stopped",
        "networks": [NETWORK],
    }


def _knowledge_mount(config: Config, output_dir: Path) -> str:
    kdir = config.path(config.stack.knowledge_dir).resolve()
    rel = os.path.relpath(kdir, output_dir.resolve())
    return rel if rel.startswith("..") or rel.startswith("/") else f"./{rel}"


def render_compose(spec: StackSpec, config: Config, *,
                   output_dir: str | os.PathLike[str] | None = None) -> str:
    """The docker-compose file (version 3.8) for ``spec``.

    Args:
        spec: the stack, best built by :func:`compose_spec` (keys as references).
        config: the resolved config (replicas, resources, monitoring ports).
        output_dir: where the file will live (relative mounts are computed from it);
            default ``compose/`` next to the config file.
    """
    out_dir = Path(output_dir) if output_dir is not None else config.path("compose")
    knowledge = _knowledge_mount(config, out_dir)
    services: dict[str, Any] = {}
    for s in spec.services:
        services[s.name] = _service(s, spec, config, knowledge)
    services["grafana"] = _grafana(config)
    data = {
        "version": COMPOSE_VERSION,
        "services": services,
        "volumes": {name: {} for name in [*VOLUMES.values(), "grafana_data"]},
        "networks": {NETWORK: {"driver": "bridge"}},
    }
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)
    return HEADER.format(env=spec.env_name, replicas=config.stack.replicas) + body


def _prometheus_yml(spec: StackSpec, config: Config) -> str:
    prom = next(s for s in spec.services if s.role == ROLE_METRICS)
    data = yaml.safe_load(_render(prom, spec, prom.files["prometheus.yml"]))
    agent = next(s for s in spec.services if s.role == ROLE_AGENT)
    for job in data.get("scrape_configs", []):
        if job.get("job_name") == "ai-agent":
            job.pop("file_sd_configs", None)
            job["dns_sd_configs"] = [{"names": [agent.name], "type": "A",
                                      "port": agent.port().port, "refresh_interval": "5s"}]
    return ("# Rendered by `agentverify compose`: agent replicas are found through DNS\n"
            "# (one A record per container of the `agent` service, also after --scale).\n"
            + yaml.safe_dump(data, sort_keys=False))


def _grafana_files(config: Config) -> dict[str, str]:
    """Grafana's provisioning, and the dashboard: the package's copy is the one source,
    its queries drawn from the agent's metric names (``monitoring.metrics``)."""
    from agentverify.monitoring.dashboard import render_dashboard_json

    datasource = {"apiVersion": 1, "datasources": [
        {"name": "Prometheus", "uid": "prometheus", "type": "prometheus", "access": "proxy",
         "url": "http://prometheus:9090", "isDefault": True}]}
    dashboards = {"apiVersion": 1, "providers": [
        {"name": "agentverify", "type": "file", "disableDeletion": False,
         "options": {"path": "/var/lib/grafana/dashboards"}}]}
    head = "# Rendered by `agentverify compose`.\n"
    return {
        "grafana/provisioning/datasources/prometheus.yml":
            head + yaml.safe_dump(datasource, sort_keys=False),
        "grafana/provisioning/dashboards/agentverify.yml":
            head + yaml.safe_dump(dashboards, sort_keys=False),
        "grafana/agent.json": render_dashboard_json(config.monitoring.metrics),
    }


def render_compose_files(spec: StackSpec, config: Config, *,
                         output_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Every file of the compose deployment, by path relative to the compose file."""
    from agentverify.traffic import upstream_conf

    files: dict[str, str] = {"docker-compose.yml": render_compose(spec, config,
                                                                   output_dir=output_dir)}
    for s in spec.services:
        for relpath, content in s.files.items():
            if relpath.startswith(("targets/", "knowledge/")) or relpath == "prometheus.yml":
                continue
            name, text = _conf_name(relpath), _render(s, spec, content)
            if files.get(name, text) != text:
                raise StackError(f"compose: two services render different {name}")
            files[name] = text
        if s.role == ROLE_LB:
            agent = next(a for a in spec.services if a.role == ROLE_AGENT)
            files["upstream.conf"] = upstream_conf([(agent.name, agent.port().port)], 1)
    files["prometheus.yml"] = _prometheus_yml(spec, config)
    files.update(_grafana_files(config))
    return dict(sorted(files.items()))


def write_compose(config: Config, output: str | os.PathLike[str] = DEFAULT_OUTPUT,
                  ) -> list[Path]:
    """Render for ``config`` and write the compose file and its config files."""
    out = Path(output)
    out_dir = out.parent
    files = render_compose_files(compose_spec(config), config, output_dir=out_dir)
    written = []
    for relpath, content in files.items():
        path = out if relpath == "docker-compose.yml" else out_dir / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)
        written.append(path)
    return written

