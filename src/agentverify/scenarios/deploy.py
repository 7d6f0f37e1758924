"""The seed's deploy pipeline, step by step, each timed.

1. validate environment — the variables the agent needs (the seed's ``OPENAI_API_KEY``,
   ``MILVUS_HOST``, ``REDIS_URL``, by the names ``stack.agent.variables`` gives them; an
   agent given no ``MILVUS_HOST`` needs ``MILVUS_URI``) are set in the environment the
   agent is deployed with; a missing one fails the deploy listing exactly those;
2. prepare resources — Redis and Milvus accept connections ("Waiting for host:port");
3. deploy application — a new generation of every replica at ``version`` starts next
   to the serving one and must become healthy (blue/green: nothing is dropped);
4. health check — GET /health on every new replica must answer 200;
5. switch traffic — the nginx upstream is rewritten, nginx reloaded, and chat requests
   through the load balancer (the agent's contract) must be answered by the new version;
   then the old generation stops.

``required_env`` and ``unset_env`` take variable names (``REDIS_URL``) or the keys of
``stack.agent.variables`` (``redis_url``), so one scenario fits every agent.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydantic import Field

from agentverify import _http
from agentverify.errors import AgentVerifyError, ContractError, DeployError
from agentverify.scenarios.registry import StepParams, step
from agentverify.scenarios.smoke import unhealthy
from agentverify.stack.spec import required_variables
from agentverify.stack.wait import PortWaitStrategy

if TYPE_CHECKING:
    from agentverify.scenarios.runner import ScenarioContext

__all__ = ["SEED_REQUIRED_ENV"]

#: the seed's required variables (the reference agent's names)
SEED_REQUIRED_ENV = ("OPENAI_API_KEY", "MILVUS_HOST", "REDIS_URL")


class DeployParams(StepParams):
    version: str = Field(..., min_length=1)
    required_env: list[str] | None = Field(
        None, description="default: the seed's required variables by this agent's names")
    unset_env: list[str] = Field(default_factory=list,
                                 description="rehearse a deploy environment lacking these")
    verify_requests: int = Field(20, ge=1, le=10_000)
    message: str = Field("How do I reset my password?", min_length=1,
                         description="the question the switch verification asks")


def _variable_names(config: Any, names: list[str]) -> list[str]:
    """Variable names, with keys of stack.agent.variables (``redis_url``) translated to
    the agent's own name; a key the agent is not given translates to nothing."""
    variables = config.stack.agent.variables
    out = []
    for name in names:
        if name in type(variables).model_fields:
            given = getattr(variables, name)
            if given:
                out.append(given)
        else:
            out.append(name)
    return out


DEPLOY_FACTS = ("deploy_ok", "deploy_failed_step", "deploy_missing_env",
                "deploy_missing_env_count", "deploy_validate_s", "deploy_prepare_s",
                "deploy_app_s", "deploy_health_s", "deploy_switch_s", "deploy_total_s",
                "deploy_served_by_new_ratio", "deploy_version")


@step("deploy", params=DeployParams, facts=DEPLOY_FACTS, timeline="rollout")
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

    required = (_variable_names(ctx.config, params.required_env)
                if params.required_env is not None else required_variables(ctx.config))

    def validate() -> None:
        env = dict(stack.agent_env(params.version))
        for name in _variable_names(ctx.config, params.unset_env):
            env.pop(name, None)
        missing = [n for n in required if not env.get(n)]
        facts["deploy_missing_env"] = ",".join(missing)
        facts["deploy_missing_env_count"] = len(missing)
        if missing:
            raise DeployError(f"missing required environment variables: {', '.join(missing)}")
        ctx.say(f"  validate: {', '.join(required)} present")

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
        if not ctx.contract.maps("version"):
            raise ContractError("deploy cannot tell which version answers: "
                                "stack.agent.contract.reply.version is null")
        with _http.new_client(base_url=stack.lb_url, timeout=10.0) as client:
            for _ in range(params.verify_requests):
                # a fresh connection each time, so every request is balanced anew
                reply = ctx.contract.ask(client, params.message,
                                         headers={"Connection": "close"})
                served += reply.version == params.version
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
