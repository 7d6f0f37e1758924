"""The HTTP API against fake clients: answers, cache, health, faults, limits, metrics, log."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from fakes import FakeCache, FakeKnowledge, FakeLimiter, FakeLLM, FakeRedis
from fastapi.testclient import TestClient

from support_agent.accesslog import AccessLog
from support_agent.app import Components, create_app
from support_agent.config import load_settings
from support_agent.knowledge import Passage
from support_agent.metrics import Metrics

PASSAGES = [
    Passage(doc="Warranty and returns", body="2-year warranty.", score=0.912345),
    Passage(doc="Warranty and returns", body="30-day returns.", score=0.8),
    Passage(doc="Orbit Plus subscription", body="4.99 USD.", score=0.51),
]


class Agent:
    """One app with fakes, and handles on them."""

    def __init__(self, env: dict[str, str] | None = None, **parts: Any) -> None:
        self.settings = load_settings({"OPENAI_API_KEY": "sk-x", "APP_VERSION": "v5", "INSTANCE_ID": "agent-1",
                                       **(env or {})})
        self.log = io.StringIO()
        self.parts = Components(
            llm=parts.get("llm", FakeLLM()), knowledge=parts.get("knowledge", FakeKnowledge(PASSAGES)),
            cache=parts.get("cache", FakeCache()), redis=parts.get("redis", FakeRedis()),
            metrics=Metrics(), access_log=AccessLog(stream=self.log), limiter=parts.get("limiter"),
        )
        self.client = TestClient(create_app(self.settings, self.parts))

    def ask(self, question: str = "How long is the warranty?", **kwargs: Any) -> Any:
        return self.client.post("/v1/ask", json={"question": question, "conversation_id": "c-1"}, **kwargs)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    def metric(self, text: str) -> float:
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(text + " "):
                return float(line.split()[-1])
        raise AssertionError(f"no sample {text}")


@pytest.fixture
def agent() -> Any:
    a = Agent()
    with a.client:
        yield a


def test_answer_shape_headers_and_citations(agent: Agent) -> None:
    resp = agent.ask()
    assert resp.status_code == 200
    assert resp.json() == {
        "text": "answer to How long is the warranty?",
        # one citation per document, at its best score, best first
        "citations": [{"doc": "Warranty and returns", "score": 0.9123},
                      {"doc": "Orbit Plus subscription", "score": 0.51}],
        "meta": {"build": "v5", "cached": False, "model": "fake-model"},
    }
    assert resp.headers["X-App-Version"] == "v5" and resp.headers["X-Served-By"] == "agent-1"
    assert len(resp.headers["X-Request-Id"]) == 32


def test_repeat_comes_from_the_cache_without_llm_calls(agent: Agent) -> None:
    first = agent.ask("How long is the warranty?").json()
    calls = (agent.parts.llm.embed_calls, agent.parts.llm.answer_calls)
    again = agent.ask("  how long is the   WARRANTY? ").json()
    assert again["meta"]["cached"] is True and again["text"] == first["text"]
    assert again["citations"] == first["citations"]
    assert (agent.parts.llm.embed_calls, agent.parts.llm.answer_calls) == calls == (1, 1)
    assert [line.get("cached") for line in agent.lines()] == [False, True]


def test_cache_down_still_answers() -> None:
    a = Agent(cache=FakeCache(down=True))
    with a.client:
        assert [a.ask().status_code, a.ask().status_code] == [200, 200]
        assert a.parts.llm.answer_calls == 2


def test_health_ok(agent: Agent) -> None:
    resp = agent.client.get("/healthz")
    assert (resp.status_code, resp.json()) == (200, {"ok": True, "deps": {"redis": "ok", "milvus": "ok"}})
    assert resp.headers["X-App-Version"] == "v5"


@pytest.mark.parametrize(("parts", "failing"), [
    ({"redis": FakeRedis(down=True)}, ["redis"]),
    ({"knowledge": FakeKnowledge(down=True)}, ["milvus"]),
    ({"redis": FakeRedis(down=True), "knowledge": FakeKnowledge(down=True)}, ["redis", "milvus"]),
])
def test_health_names_the_failing_dependency(parts: dict[str, Any], failing: list[str]) -> None:
    a = Agent(**parts)
    with a.client:
        resp = a.client.get("/healthz")
    body = resp.json()
    assert resp.status_code == 503 and body["ok"] is False and body["failing"] == failing
    for name in failing:
        assert body["deps"][name].startswith("down: ")
    if "milvus" in failing:
        assert "run the ingest" in body["deps"]["milvus"]


def test_fault_unhealthy_fails_health_with_healthy_dependencies() -> None:
    a = Agent({"SUPPORT_AGENT_FAULT": "unhealthy"})
    with a.client:
        resp = a.client.get("/healthz")
        assert resp.status_code == 503 and resp.json()["failing"] == ["feature_flag"]
        assert a.ask().status_code == 200


def test_fault_errors_fails_every_other_question() -> None:
    a = Agent({"SUPPORT_AGENT_FAULT": "errors"})
    with a.client:
        statuses = [a.ask(f"question {i}").status_code for i in range(6)]
        assert statuses == [200, 500, 200, 500, 200, 500]
        assert a.metric('support_agent_failures_total{reason="fault_injected"}') == 3
        assert a.client.get("/healthz").status_code == 200


def test_rate_limit_answers_429_with_retry_after_per_customer() -> None:
    a = Agent({}, limiter=FakeLimiter(allow=2))
    with a.client:
        acme = [a.ask(headers={"X-Customer-Id": "acme"}) for _ in range(3)]
        assert [r.status_code for r in acme] == [200, 200, 429]
        assert acme[2].headers["Retry-After"] == "2" and "rate limit" in acme[2].json()["error"]
        assert a.ask(headers={"X-Customer-Id": "globex"}).status_code == 200
        assert a.ask(headers={"X-Forwarded-For": "10.0.0.7, 10.0.0.1"}).status_code == 200
        assert set(a.parts.limiter.seen) == {"customer:acme", "customer:globex", "ip:10.0.0.7"}
        assert a.metric('support_agent_failures_total{reason="rate_limited"}') == 1


def test_rate_limiter_down_fails_open() -> None:
    a = Agent({}, limiter=FakeLimiter(down=True))
    with a.client:
        assert [a.ask().status_code for _ in range(3)] == [200, 200, 200]


@pytest.mark.parametrize(("body", "expected"), [
    (b"not json", "Invalid JSON"),
    (b'{"conversation_id": "c"}', "question: Field required"),
    (b'{"question": 3}', "question: Input should be a valid string"),
    (b'{"question": "   "}', "question: must not be blank"),
    (b'["question"]', "Input should be an object"),
])
def test_bad_body_is_400_with_one_line(agent: Agent, body: bytes, expected: str) -> None:
    resp = agent.client.post("/v1/ask", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert expected in resp.json()["error"] and "\n" not in resp.json()["error"]
    assert agent.metric('support_agent_failures_total{reason="bad_request"}') == 1


def test_llm_failure_is_502_and_counted() -> None:
    a = Agent(llm=FakeLLM(fail=True))
    with a.client:
        resp = a.ask()
        assert resp.status_code == 502 and "answered 503 after 3 retries" in resp.json()["error"]
        assert a.metric('support_agent_failures_total{reason="llm_error"}') == 1


def test_knowledge_failure_is_503_and_counted() -> None:
    a = Agent(knowledge=FakeKnowledge(down=True))
    with a.client:
        resp = a.ask()
        assert resp.status_code == 503 and resp.json()["error"].startswith("Milvus at")
        assert a.metric('support_agent_failures_total{reason="knowledge_error"}') == 1


def test_metrics_count_routes_and_durations(agent: Agent) -> None:
    agent.ask()
    agent.ask()
    agent.client.get("/healthz")
    agent.client.get("/nowhere")
    text = agent.client.get("/metrics").text
    for family in ("support_agent_requests_total", "support_agent_request_duration_seconds_bucket",
                   "support_agent_failures_total", "support_agent_llm_tokens_total"):
        assert family in text
    assert agent.metric('support_agent_requests_total{route="/v1/ask"}') == 2
    assert agent.metric('support_agent_requests_total{route="/healthz"}') == 1
    assert agent.metric('support_agent_requests_total{route="other"}') == 1
    assert agent.metric("support_agent_request_duration_seconds_count") == 2


def test_one_log_line_per_request_with_its_request_id(agent: Agent) -> None:
    responses = [agent.ask(), agent.client.get("/healthz"), agent.ask(headers={"X-Request-Id": "given-id-1"}),
                 agent.ask(headers={"X-Request-Id": "bad id with spaces"}), agent.client.get("/metrics")]
    lines = agent.lines()
    assert [line["request_id"] for line in lines] == [r.headers["X-Request-Id"] for r in responses]
    assert lines[2]["request_id"] == "given-id-1" and lines[3]["request_id"] != "bad id with spaces"
    assert [(line["method"], line["path"], line["status"]) for line in lines][:2] == [
        ("POST", "/v1/ask", 200), ("GET", "/healthz", 200)]
    assert lines[0]["conversation_id"] == "c-1" and lines[0]["instance"] == "agent-1"
    assert all(isinstance(line["duration_ms"], float) and line["ts"].endswith("Z") for line in lines)
