"""`pytest --agentverify-env ...` in a user's project: fixtures and scenarios on a real stack."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import CONFIG, require_backend
from tests.integration.helpers import leftovers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER_TESTS = """
import httpx

def test_stack_is_up(agent_stack):
    assert len(agent_stack.replicas) == 2
    assert agent_stack.endpoints["lb"].startswith("http://127.0.0.1:")

def test_chat_through_the_client(agent_client):
    resp = agent_client.post("/chat", json={"message": "How do I export my data?"})
    assert resp.status_code == 200
    assert resp.json()["sources"]

def test_prometheus_fixture(prometheus, agent_stack):
    targets = prometheus.wait_for_targets("ai-agent", len(agent_stack.replicas), timeout=30)
    assert all(t.health == "up" for t in targets)
"""

SCENARIO = """
name: user-smoke
steps:
  - health: {}
  - chat: {message: "How do I export my data?"}
expect:
  unhealthy_replicas: "== 0"
  chat_sources: ">= 1"
  chat_status: "== 500"
"""


@pytest.mark.parametrize("backend", [pytest.param("local"),
                                     pytest.param("docker", marks=pytest.mark.docker)])
def test_user_project_runs_fixtures_and_scenarios_on_one_stack(
        pytester: pytest.Pytester, backend: str) -> None:
    require_backend(backend)
    pytester.makepyfile(test_user=USER_TESTS)
    (pytester.mkdir("scenarios") / "smoke.yaml").write_text(SCENARIO)
    result = pytester.runpytest_subprocess(
        "--agentverify-env=dev", f"--agentverify-config={CONFIG}",
        f"--agentverify-backend={backend}", "-p", "no:cacheprovider", timeout=600)
    # the scenario's last gate is wrong on purpose: 200 was measured, 500 expected
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "*agentverify: stack up in *",
        "*FAIL chat_status: measured 200, threshold == 500*",
        "*agentverify gates (dev, * backend)*",
        "user-smoke: FAILED in *",
        "*PASS unhealthy_replicas: measured 0, threshold == 0*",
    ])
    report = json.loads((pytester.path / "reports" / "results.json").read_text())
    assert report["env"] == "dev" and report["backend"] == backend
    (scenario,) = report["scenarios"]
    assert scenario["name"] == "user-smoke" and scenario["passed"] is False
    gates = {g["name"]: g for g in scenario["gates"]}
    assert gates["chat_status"] == {"name": "chat_status", "threshold": "== 500",
                                    "measured": 200, "passed": False, "verdict": "fail"}
    assert gates["unhealthy_replicas"]["passed"] is True
    stack = json.loads((pytester.path / "reports" / "stack.json").read_text())
    assert leftovers(stack["run_id"], stack["run_dir"]) == []
