"""agent_ops: the admin endpoint when the contract names one, else the seed's way (a
changed config.yaml and a rolling restart). Real agents: tests/integration/test_user_agent.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentverify import _http, agent_ops
from agentverify.config import load_config
from agentverify.errors import AgentOpError
from agentverify.stack.stack import Rollout, StepTiming

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "support-agent" / "agentverify.yaml"


@dataclass
class _Replica:
    instance: str
    url: str


@dataclass
class FakeStack:
    """What agent_ops uses of a Stack; reconfigure_agents records each config."""

    config: Any
    fail_on: str | None = None
    lb_url: str = "http://lb"
    agent_config: Any = None
    reconfigured: list[Any] = field(default_factory=list)
    replicas: list[_Replica] = field(default_factory=lambda: [
        _Replica("agent-0", "http://a0"), _Replica("agent-1", "http://a1")])

    def __post_init__(self) -> None:
        self.agent_config = self.agent_config or self.config

    def reconfigure_agents(self, config: Any) -> Rollout:
        self.reconfigured.append(config)
        self.agent_config = config
        rollout = Rollout(version="v1", from_version="v1")
        if self.fail_on and len(self.reconfigured) == 1:
            rollout.failure = self.fail_on
            return rollout
        rollout.steps = [StepTiming(r.instance, "v1", "v1", 1, 1, 1) for r in self.replicas]
        return rollout


def test_rate_limit_without_an_admin_endpoint_changes_the_file_and_restarts() -> None:
    stack = FakeStack(load_config(EXAMPLE, env="dev"))
    done = agent_ops.rate_limit(stack, requests_per_second=5, burst=7)
    assert (done.operation, done.method, done.replicas_restarted) == ("rate_limit", "restart", 2)
    assert done.previous == {"enabled": False, "requests_per_second": 10.0, "burst": 20}
    rate = stack.reconfigured[0].rate_limit
    assert (rate.enabled, rate.requests_per_second, rate.burst) == (True, 5.0, 7)
    assert agent_ops.current_rate_limit(stack) == {"enabled": True, "requests_per_second": 5.0,
                                                  "burst": 7}
    # the same again changes nothing; the previous state puts it back
    assert agent_ops.rate_limit(stack, requests_per_second=5, burst=7).method == "none"
    agent_ops.rate_limit(stack, **done.previous)
    assert stack.agent_config.rate_limit.enabled is False
    assert stack.agent_config == stack.config


def test_switch_llm_without_an_admin_endpoint_writes_the_backups_model() -> None:
    stack = FakeStack(load_config(EXAMPLE, env="dev"))
    assert agent_ops.current_llm(stack) == "primary"
    done = agent_ops.switch_llm(stack, "backup")
    assert done.method == "restart" and done.previous == {"use": "primary"}
    model = stack.agent_config.model
    assert (model.model_name, model.api_key_env) == ("gpt-4o", "OPENAI_BACKUP_API_KEY")
    assert agent_ops.current_llm(stack) == "backup"
    assert "gpt-4o (the backup)" in done.detail
    agent_ops.switch_llm(stack, "primary")
    assert stack.agent_config.model == stack.config.model
    with pytest.raises(AgentOpError, match="expected primary or backup"):
        agent_ops.switch_llm(stack, "secondary")  # type: ignore[arg-type]


def test_a_restart_that_fails_puts_the_fleet_back_and_names_the_replica() -> None:
    stack = FakeStack(load_config(EXAMPLE, env="dev"),
                      fail_on="agent-1 at v1 did not become healthy")
    with pytest.raises(AgentOpError) as err:
        agent_ops.rate_limit(stack, requests_per_second=5, burst=5)
    assert "agent-1 at v1 did not become healthy" in str(err.value)
    assert "previous configuration was put back" in str(err.value)
    assert stack.agent_config == stack.config


def _mock_admin(monkeypatch: pytest.MonkeyPatch, state: dict[str, Any]) -> list[str]:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url}")
        path = request.url.path
        if request.method == "POST" and path == "/admin/rate-limit":
            state["rate"] = json.loads(request.content)
        if request.method == "POST" and path == "/admin/llm":
            state["use"] = json.loads(request.content)["use"]
        if path == "/admin/rate-limit":
            return httpx.Response(200, json=state["rate"])
        if path == "/admin/llm":
            return httpx.Response(200, json={"use": state["use"]})
        if path == "/admin/cache/clear":
            return httpx.Response(200, json={"deleted": 4})
        return httpx.Response(404, json={"detail": "Not Found"})

    client = httpx.Client(transport=httpx.MockTransport(handle))
    monkeypatch.setattr(_http, "client", lambda: client)
    return seen


def test_the_reference_agents_admin_endpoints_are_used_when_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"rate": {"enabled": False, "requests_per_second": 20.0, "burst": 20},
             "use": "primary"}
    seen = _mock_admin(monkeypatch, state)
    stack = FakeStack(load_config(REPO / "agentverify.yaml", env="dev"))
    done = agent_ops.rate_limit(stack, requests_per_second=5, burst=5)
    assert done.method == "admin" and done.previous["requests_per_second"] == 20.0
    # straight to a replica (not through nginx: it may be what fails in an emergency)
    assert "POST http://a0/admin/rate-limit" in seen
    assert not any("//lb/" in call for call in seen)
    # every replica was asked until it reported the new limit
    assert {"GET http://a0/admin/rate-limit", "GET http://a1/admin/rate-limit"} <= set(seen)
    assert agent_ops.switch_llm(stack, "backup").method == "admin" and state["use"] == "backup"
    cleared = agent_ops.clear_cache(stack)
    assert (cleared.method, cleared.deleted) == ("admin", 4)
    assert stack.reconfigured == []  # no restart at all


def test_an_admin_endpoint_the_agent_lacks_says_how_to_declare_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _mock_admin(monkeypatch, {})
    cfg = load_config(REPO / "agentverify.yaml", env="dev",
                      overrides={"stack.agent.contract.admin.clear_cache": "/nope"})
    with pytest.raises(AgentOpError) as err:
        agent_ops.clear_cache(FakeStack(cfg))
    assert "POST /nope answered 404" in str(err.value)
    assert "null if the agent has no such endpoint" in str(err.value)


def test_reconfigure_changes_any_key_and_remembers_the_old_value() -> None:
    stack = FakeStack(load_config(EXAMPLE, env="dev"))
    done = agent_ops.reconfigure(stack, {"model.model_name": "gpt-4o", "cache.ttl": 60},
                                 operation="update_model")
    assert (done.operation, done.method, done.replicas_restarted) == ("update_model", "restart", 2)
    assert done.previous == {"model.model_name": "gpt-4o-mini", "cache.ttl": 3600}
    assert stack.agent_config.model.model_name == "gpt-4o" and stack.agent_config.cache.ttl == 60
    agent_ops.reconfigure(stack, done.previous)
    assert stack.agent_config == stack.config
