"""The seed's deploy pipeline, step by step, each timed.

1. validate environment — the variables the agent needs (``OPENAI_API_KEY``,
   ``MILVUS_HOST``, ``REDIS_URL``) are set in the environment the agent is deployed
   with; a missing one fails the deploy listing exactly the missing ones;
2. prepare resources — Redis and Milvus accept connections ("Waiting for host:port");
3. deploy application — a new generation of every replica at ``version`` starts next
   to the serving one and must become healthy (blue/green: nothing is dropped);
4. health check — GET /health on every new replica must answer 200;
5. switch traffic — the nginx upstream is rewritten, nginx reloaded, and requests
   through the load balancer must reach the new version; then the old generation stops.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import Field

from agentverify.errors import AgentVerifyError, DeployError
from agentverify.scenarios.registry import StepParams, step
from agentverify.scenarios.smoke import unhealthy
from agentverify.stack.wait import PortWaitStrategy

if TYPE_CHECKING:
    from agentverify.scenarios.runner import ScenarioContext

__all__ = ["SEED_REQUIRED_ENV"]

SEED_REQUIRED_ENV = ("OPENAI_API_KEY", "MILVUS_HOST", "REDIS_URL")


class DeployParams(StepParams):
    version: str = Field(..., min_length=1)
    required_env: list[str] = Field(default_factory=lambda: list(SEED_REQUIRED_ENV))
    unset_env: list[str] = Field(default_factory=list,
                                 description="rehearse a deploy environment lacking these")
    verify_requests: int = Field(20, ge=1, le=10_000)


DEPLOY_FACTS = ("deploy_ok", "deploy_failed_step", "deploy_missing_env",
                "deploy_missing_env_count", "deploy_validate_s", "deploy_prepare_s",
                "deploy_app_s", "deploy_health_s", "deploy_switch_s", "deploy_total_s",
                "deploy_served_by_new_ratio", "deploy_version")


@step("deploy", params=DeployParams, facts=DEPLOY_FACTS)
def deploy(ctx: ScenarioContext, params: DeployParams) -> dict[str, Any]:
    """The seed's five-step deploy of ``version``, each step timed and reported."""
    stack = ctx.stack
    facts: dict[str, Any] = {"deploy_ok": False, "deploy_failed_step": "",
                             "deploy_missing_env": "", "deploy_missing_env_count": 0,
                             "deploy_version": params.version}
    started = time.monotonic()

    def timed(name: str, func: Any) -> Any:
        t0 = time.monotonic()
        try:
            return func()
        except AgentVerifyError as exc:
            facts["deploy_failed_step"] = name
            ctx.say(f"  {name}: FAILED: {str(exc).splitlines()[0]}")
            raise
        finally:
            facts[f"deploy_{name}_s"] = round(time.monotonic() - t0, 3)
            facts["deploy_total_s"] = round(time.monotonic() - started, 3)

    def validate() -> None:
        env = dict(stack.agent_env(params.version))
        for name in params.unset_env:
            env.pop(name, None)
        missing = [n for n in params.required_env if not env.get(n)]
        facts["deploy_missing_env"] = ",".join(missing)
        facts["deploy_missing_env_count"] = len(missing)
        if missing:
            raise DeployError(f"missing required environment variables: {', '.join(missing)}")
        ctx.say(f"  validate: {', '.join(params.required_env)} present")

    def prepare() -> None:
        for name in ("redis", "milvus"):
            handle = stack.service(name)
            host, port = handle.endpoint()
            ctx.say(f"  prepare: waiting for {name} at {host}:{port}")
            PortWaitStrategy(handle.spec.port().name).with_timeout(30).wait_until_ready(handle)

    standby: list[Any] = []

    def deploy_app() -> None:
        standby.extend(stack.start_standby(params.version))
        ctx.say(f"  deploy: {len(standby)} replica(s) of {params.version} healthy on standby")

    def health() -> None:
        bad = unhealthy(standby, ctx.config.stack.agent.contract.health_path)
        if bad:
            raise DeployError(f"health check failed: {'; '.join(bad)}")

    def switch() -> None:
        seconds = stack.promote(standby)
        served = 0
        with httpx.Client(base_url=stack.lb_url, timeout=10.0) as client:
            for _ in range(params.verify_requests):
                resp = client.get("/version", headers={"Connection": "close"})
                served += resp.headers.get("x-agent-version") == params.version
        facts["deploy_served_by_new_ratio"] = round(served / params.verify_requests, 4)
        ctx.say(f"  switch: nginx serves the new upstream after {seconds:.2f}s; "
                f"{served}/{params.verify_requests} requests answered by {params.version}")
        if served != params.verify_requests:
            raise DeployError(f"only {served} of {params.verify_requests} requests reached "
                              f"{params.version} after the switch")

    try:
        timed("validate", validate)
        timed("prepare", prepare)
        timed("app", deploy_app)
        try:
            timed("health", health)
        except AgentVerifyError:
            for r in standby:  # never leave a standby generation running
                stack.discard(r)
            raise
        timed("switch", switch)
    except DeployError:
        return facts
    facts["deploy_ok"] = True
    return facts
