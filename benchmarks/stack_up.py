#!/usr/bin/env python
"""Stack start-up: time from `up` to all-healthy, beside each service's own start time.

Every figure is measured in the same run: each instance's own time from start to ready
(readiness check passing), their sum (what a one-by-one start would cost) and max, and
the dependency graph's critical path (the best a parallel start can do). The ratio of
`up` to the sum shows what the parallel, dependency-ordered start saves.

For the docker backend the same run also starts the same containers by hand: the same
images, commands, files and network aliases, one after another with plain docker SDK
calls (``containers.run``), each waited on the same readiness check. ``up`` beside that
raw figure is the price (or the gain) of agentverify's machinery over bare docker.

    .venv/bin/python benchmarks/stack_up.py --backend local --env staging
    .venv/bin/python benchmarks/stack_up.py --backend docker --env staging
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from agentverify.config import load_config  # noqa: E402
from agentverify.stack.stack import Stack  # noqa: E402
from agentverify.stack.wait import ServiceStatus  # noqa: E402


def critical_path(stack: Stack, own: dict[str, float]) -> float:
    """Earliest all-ready time if every service started the moment its deps were ready."""
    ready: dict[str, float] = {}
    for svc in stack.spec.order():
        names = [n for n in own if n == svc.name or n.startswith(f"{svc.name}-")]
        start = max((ready[d] for d in svc.depends_on), default=0.0)
        ready[svc.name] = start + max((own[n] for n in names), default=0.0)
    return max(ready.values())


def measure_backend(backend: str, env: str) -> dict[str, float]:
    config = load_config(REPO / "agentverify.yaml", env)
    stack = Stack.from_config(config, backend=backend)
    t0 = time.monotonic()
    with stack:
        up = time.monotonic() - t0
        own = stack.timings()
    total, worst = sum(own.values()), max(own.values())
    path = critical_path(stack, own)
    print(f"\n{backend} backend, {env} ({config.stack.replicas} agent replicas)")
    for name, secs in sorted(own.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<14} ready in {secs:6.2f}s")
    print(f"  sum of own start times   {total:6.2f}s  (one service after another)")
    print(f"  max of own start times   {worst:6.2f}s")
    print(f"  critical path            {path:6.2f}s  (best possible parallel start)")
    print(f"  stack up, all healthy    {up:6.2f}s  (includes run setup and reaping)")
    print(f"  ratio up / sum           {up / total:6.2f}x  (below 1: parallel start pays)")
    print(f"  ratio up / critical path {up / path:6.2f}x  (1.0 is ideal)")
    return {"up": up, "sum": total, "max": worst, "critical_path": path}


# ------------------------------------------------------------------ raw docker, by hand


class _RawTarget:
    """What a readiness check needs of a container started by hand."""

    def __init__(self, container, spec) -> None:
        self.container, self.spec = container, spec

    @property
    def name(self) -> str:
        return self.container.name

    def endpoint(self, port: str) -> tuple[str, int]:
        self.container.reload()
        binding = self.container.attrs["NetworkSettings"]["Ports"][
            f"{self.spec.port(port).port}/tcp"][0]
        return "127.0.0.1", int(binding["HostPort"])

    def status(self) -> ServiceStatus:
        self.container.reload()
        state = self.container.attrs["State"]
        return ServiceStatus(bool(state["Running"]), state.get("ExitCode"))

    def logs(self, tail: int = 50) -> str:
        return self.container.logs(tail=tail).decode("utf-8", "replace")


def raw_docker_run(env: str) -> float:
    """Seconds to start the stack's containers one by one with plain SDK calls."""
    import json
    import shutil
    import tempfile

    import docker

    from agentverify.secrets import resolve_api_keys
    from agentverify.stack.docker import aliases_for, resource_kwargs
    from agentverify.stack.placeholders import (
        CONF_DIR,
        DATA_DIR,
        container_resolver,
        render_template,
    )
    from agentverify.stack.runstate import RunContext
    from agentverify.stack.spec import ROLE_AGENT, ROLE_LB, ROLE_METRICS, build_stack_spec
    from agentverify.traffic import upstream_conf

    config = load_config(REPO / "agentverify.yaml", env)
    spec = build_stack_spec(config, api_keys=resolve_api_keys(config))
    client = docker.from_env(timeout=120)
    tmp = Path(tempfile.mkdtemp(prefix="agentverify-raw-"))
    run = RunContext.create("docker-raw", state_dir=tmp)  # labels, so a crash gets reaped
    labels = {**run.labels, "agentverify.benchmark": "raw"}
    net = f"agentverify-{run.run_id}"
    agents: list[str] = []
    print(f"\nraw docker run, {env}: the same containers one after another")
    t0 = time.monotonic()
    try:
        client.networks.create(net, driver="bridge", labels=labels)
        for svc in spec.order():
            count = svc.replicas if svc.role == ROLE_AGENT else 1
            for i in range(count):
                instance = f"agent-{i}" if svc.role == ROLE_AGENT else svc.name
                aliases = aliases_for(svc, instance, 1)

                def lookup(name, port, svc=svc):
                    p = spec[name].port(port)
                    return name, p.port, p.scheme

                resolve = container_resolver(svc, lookup)
                conf, data = tmp / instance / "conf", tmp / instance / "data"
                files = dict(svc.files)
                if svc.role == ROLE_LB:
                    files["upstream.conf"] = upstream_conf(
                        [(a, spec["agent"].port().port) for a in agents], 1)
                if svc.role == ROLE_METRICS:
                    files["targets/agents.json"] = json.dumps(
                        [{"targets": [f"{a}:8000" for a in agents]}])
                for rel, text in files.items():
                    (conf / rel).parent.mkdir(parents=True, exist_ok=True)
                    (conf / rel).write_text(render_template(text, resolve))
                data.mkdir(parents=True, exist_ok=True)
                environment = {k: render_template(v, resolve) for k, v in svc.env.items()}
                environment["AGENT_REPLICA"] = instance
                started = time.monotonic()
                container = client.containers.run(
                    svc.image, [render_template(a, resolve) for a in svc.command],
                    name=f"av-{run.run_id}-{instance}", detach=True, init=True,
                    labels=labels, environment=environment, working_dir=DATA_DIR,
                    volumes={str(conf): {"bind": CONF_DIR, "mode": "rw"},
                             str(data): {"bind": DATA_DIR, "mode": "rw"}},
                    ports={f"{p.port}/tcp": ("127.0.0.1", None) for p in svc.ports},
                    network=net, networking_config={net: client.api.create_endpoint_config(
                        aliases=aliases)}, **resource_kwargs(svc))
                if svc.kind == "job":
                    code = container.wait(timeout=300)["StatusCode"]
                    if code != 0:
                        raise SystemExit(f"raw {instance} failed: "
                                         f"{container.logs(tail=20).decode()}")
                elif svc.health is not None:
                    svc.health.wait_until_ready(_RawTarget(container, svc))
                if svc.role == ROLE_AGENT:
                    agents.append(aliases[0])
                print(f"  raw {instance:<14} ready in {time.monotonic() - started:6.2f}s")
        return time.monotonic() - t0
    finally:
        flt = {"label": f"agentverify.run={run.run_id}"}
        for c in client.containers.list(all=True, filters=flt):
            c.remove(force=True)
        for n in client.networks.list(filters=flt):
            n.remove()
        run.close()
        client.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="local", choices=["local", "docker", "all"])
    parser.add_argument("--env", default="staging")
    args = parser.parse_args()
    backends = ["local", "docker"] if args.backend == "all" else [args.backend]
    for backend in backends:
        figures = measure_backend(backend, args.env)
        if backend == "docker":
            raw = raw_docker_run(args.env)
            print(f"  raw docker run, all healthy {raw:6.2f}s")
            print(f"  docker backend up        {figures['up']:6.2f}s")
            print(f"  ratio up / raw docker    {figures['up'] / raw:6.2f}x  "
                  "(below 1: the parallel start beats a sequential docker run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
