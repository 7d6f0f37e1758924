"""The seed's stack on real servers: every replica healthy, answers, caches, is observed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentverify.monitoring.dashboard import check_dashboard, load_dashboard
from agentverify.monitoring.prometheus import PrometheusClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_every_replica_is_healthy_and_reports_its_version(stack: Any) -> None:
    assert len(stack.replicas) == 3
    for r in stack.replicas:
        resp = httpx.get(r.url + "/health", timeout=5)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["checks"] == {"redis": "ok", "milvus": "ok"}
        assert body["version"] == "v1"
        assert body["replica"] == r.instance


def test_each_service_has_a_process_group_of_its_own_in_our_session(stack: Any) -> None:
    """Stopped by group id, yet scheduled with us: the kernel's autogroup scheduler shares
    the CPU per session, and a service in a session of its own takes a share of the
    machine as large as all the docker engine's containers together."""
    if stack.backend_name != "local":
        pytest.skip("a docker service is a container, not a process of this machine's")
    for handle in stack.instances():
        pid = handle.state.proc.pid
        assert os.getpgid(pid) == pid, f"{handle.name} shares a process group"
        assert os.getsid(pid) == os.getsid(0), f"{handle.name} runs in a session of its own"


def test_chat_through_nginx_is_answered_with_retrieved_sources(stack: Any) -> None:
    resp = httpx.post(stack.lb_url + "/chat",
                      json={"message": "How do I set up single sign-on with SAML?"}, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["answer"]
    assert body["sources"], body
    assert any("SSO" in s["title"] or "Single Sign-On" in s["title"] for s in body["sources"])
    assert resp.headers["x-agent-version"] == "v1"


def test_a_cached_repeat_makes_no_llm_call(stack: Any) -> None:
    question = {"message": "What happens to my data when I delete my account?"}
    first = httpx.post(stack.lb_url + "/chat", json=question, timeout=30)
    assert first.status_code == 200
    before = httpx.get(stack.endpoints["llm"] + "/ledger").json()
    again = httpx.post(stack.lb_url + "/chat", json=question, timeout=30)
    after = httpx.get(stack.endpoints["llm"] + "/ledger").json()
    assert again.status_code == 200 and again.json()["cached"] is True
    assert again.json()["answer"] == first.json()["answer"]
    assert after == before, "the repeat reached the LLM"


def test_traffic_is_spread_over_every_replica(stack: Any) -> None:
    seen = set()
    with httpx.Client(base_url=stack.lb_url, timeout=10) as client:
        for _ in range(30):
            seen.add(client.get("/version").headers["x-agent-replica"])
    assert seen == {r.instance for r in stack.replicas}


def test_prometheus_scrapes_every_replica_and_all_are_up(stack: Any) -> None:
    expected = {"%s:%d" % r.handle.address("http") for r in stack.replicas}
    with PrometheusClient(stack.endpoints["prometheus"]) as prom:
        targets = prom.wait_for_targets("ai-agent", expected, timeout=30)
    assert {t.instance for t in targets} == expected
    assert all(t.health == "up" for t in targets)


def test_every_dashboard_panel_query_returns_data_after_traffic(stack: Any) -> None:
    with httpx.Client(base_url=stack.lb_url, timeout=30) as client:
        for i in range(12):
            assert client.post("/chat", json={"message": f"How do webhooks retry? ({i})"}
                               ).status_code == 200
    with PrometheusClient(stack.endpoints["prometheus"]) as prom:
        check = check_dashboard(load_dashboard(), prom, timeout=45)
    assert check.panels_total == 4
    assert check.passed, str(check)


def test_stack_json_has_the_documented_shape(stack: Any, tmp_path: Path) -> None:
    data = json.loads(stack.write_stack_json(tmp_path / "stack.json").read_text())
    assert data["backend"] in {"local", "docker"} and data["env"] == "staging"
    services = data["services"]
    for name in ("lb", "agent-0", "agent-1", "agent-2", "redis", "milvus", "prometheus", "llm"):
        assert name in services, name
        assert services[name]["url"].split("://")[1].startswith("127.0.0.1:"), services[name]


def test_the_api_key_never_reaches_logs_reports_or_reprs(stack: Any, av_session: Any) -> None:
    key = stack.agent_env("v1")["OPENAI_API_KEY"]
    assert len(key) > 16
    # the key is in use: an unauthenticated call to the LLM is refused
    assert httpx.post(stack.endpoints["llm"] + "/v1/embeddings",
                      json={"input": "x"}).status_code == 401
    av_session.write_reports()
    stack.write_stack_json(av_session.report_dir / "stack.json")
    places = [p for p in stack.run.run_dir.rglob("*") if p.is_file()]
    places += [p for p in av_session.report_dir.rglob("*") if p.is_file()]
    assert places
    for path in places:
        assert key not in path.read_text(errors="replace"), path
    assert key not in repr(stack.spec) and key not in repr(stack.spec["agent"])
    assert key not in str(stack.to_json())
