"""Unit tests of the reference agent: no servers, Redis / Milvus / LLM are fakes."""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from fractions import Fraction
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from redis.exceptions import ConnectionError as RedisConnectionError

from agentverify.errors import ConfigError
from agentverify.reference_agent.app import create_app
from agentverify.reference_agent.cache import ANSWER_PREFIX, answer_key, normalise
from agentverify.reference_agent.faults import ErrorInjector, should_fail
from agentverify.reference_agent.ingest import (
    load_documents,
    passages_of,
    split_passages,
    stable_id,
)
from agentverify.reference_agent.llm import LLMClient, LLMEndpoint, LLMError, RetryPolicy
from agentverify.reference_agent.ratelimit import RateDecision
from agentverify.reference_agent.service import build_messages
from agentverify.reference_agent.settings import (
    AgentConfigError,
    AgentSettings,
    ModelSettings,
    load_settings,
)
from agentverify.reference_agent.vectors import Passage, VectorStoreError
from agentverify.seed import CostSection

SEED_YAML = """
environment: staging
log_level: INFO
model: {provider: openai, model_name: gpt-4, temperature: 0.7, max_tokens: 2000,
        retry_count: 3, timeout: 30, base_url: "http://127.0.0.1:8080/v1",
        api_key_env: OPENAI_API_KEY,
        backup: {provider: openai, model_name: gpt-3.5-turbo,
                 base_url: "http://127.0.0.1:8080/v1", api_key_env: OPENAI_BACKUP_API_KEY}}
vector_store: {type: milvus, host: 127.0.0.1, port: 19530, collection: agent_knowledge,
               dim: 64, top_k: 3}
cache: {type: redis, url: "redis://127.0.0.1:6379/0", ttl: 3600}
monitoring: {prometheus_port: 9090, grafana_port: 3000, alert_webhook: null,
             scrape_interval: 1s, evaluation_interval: 1s}
rate_limit: {enabled: false, requests_per_second: 20.0, burst: 20}
cost: {prices: {gpt-4: {input_per_million: 30.0, output_per_million: 60.0},
                text-embedding-3-small: {input_per_million: 0.02, output_per_million: 0.0}},
       budget_usd: null, embedding_model: text-embedding-3-small}
stack: {replicas: 3}
"""


# --------------------------------------------------------------------------- fakes


class TestClient:
    """A synchronous client running the app's lifespan, over httpx.ASGITransport.

    starlette's TestClient warns (an error here) unless the separate ``httpx2``
    package is installed; this does the same job with the httpx we already have.
    """

    __test__ = False  # not a test class, despite the name

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None
        self._lifespan: AbstractAsyncContextManager[Any] | None = None

    def __enter__(self) -> TestClient:
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self._lifespan = self.app.router.lifespan_context(self.app)
        self.portal.call(self._lifespan.__aenter__)
        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 50000))
        self.http = httpx.AsyncClient(transport=transport, base_url="http://agent.test")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._portal_cm is not None and self._lifespan is not None
        try:
            self.portal.call(self.http.aclose)
            self.portal.call(self._lifespan.__aexit__, None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.portal.call(functools.partial(self.http.request, method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


class FakeRedis:
    """The slice of redis.asyncio the agent uses, in memory; ``down`` fails every call."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.ttls: dict[str, int] = {}
        self.down = False
        self.buckets: dict[str, float] = {}

    def _check(self) -> None:
        if self.down:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379.")

    async def get(self, key: str) -> str | None:
        self._check()
        return self.data.get(key)

    async def set(self, key: str, value: str) -> None:
        self._check()
        self.data[key] = value

    async def setex(self, key: str, ttl: int, value: str) -> None:
        self._check()
        self.data[key] = value
        self.ttls[key] = ttl

    async def ping(self) -> bool:
        self._check()
        return True

    async def scan_iter(self, match: str, count: int = 10) -> Any:
        self._check()
        for key in list(self.data):
            if fnmatch.fnmatchcase(key, match):
                yield key

    async def unlink(self, *keys: str) -> int:
        self._check()
        return sum(self.data.pop(k, None) is not None for k in keys)

    def register_script(self, script: str) -> Callable[..., Any]:
        # A bucket without refill: enough to see the limiter's decisions in a unit test.
        async def run(keys: Sequence[str], args: Sequence[Any]) -> list[int]:
            self._check()
            burst = float(args[1])
            tokens = self.buckets.get(keys[0], burst)
            if tokens >= 1:
                self.buckets[keys[0]] = tokens - 1
                return [1, 0]
            return [0, 500_000]

        return run


class FakeVectorStore:
    """Returns fixed passages; ``error`` makes every call fail."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.searches = 0

    async def search(self, vector: Sequence[float], top_k: int) -> list[Passage]:
        self.searches += 1
        if self.error:
            raise VectorStoreError(self.error)
        return [
            Passage(1, "Resetting your password", "password-reset.md", "Click forgot.", 0.91),
            Passage(2, "Webhooks", "webhooks.md", "Webhooks are signed.", 0.42),
        ][:top_k]

    async def check(self, timeout: float) -> None:
        if self.error:
            raise VectorStoreError(self.error)

    async def close(self) -> None:
        return None


class FakeLLM:
    """An OpenAI-shaped handler for httpx.MockTransport that records every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.fail_with: int | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_with is not None:
            return httpx.Response(self.fail_with, json={"error": {"message": "boom"}})
        body = json.loads(request.content)
        if request.url.path.endswith("/embeddings"):
            inputs = body["input"]
            return httpx.Response(200, json={
                "object": "list",
                "data": [{"index": i, "embedding": [0.1] * body["dimensions"]}
                         for i in range(len(inputs))],
                "usage": {"prompt_tokens": 7, "total_tokens": 7},
            })
        return httpx.Response(200, json={
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Use reset."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
        })

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]


async def _no_sleep(seconds: float) -> None:
    return None


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AGENT_CONFIG", "REDIS_URL", "MILVUS_HOST", "MILVUS_PORT", "OPENAI_BASE_URL",
                 "OPENAI_BACKUP_BASE_URL", "OPENAI_API_KEY", "OPENAI_BACKUP_API_KEY",
                 "AGENT_VERSION", "AGENT_REPLICA", "AGENT_FAIL_HEALTH", "AGENT_ERROR_RATE",
                 "AGENT_LATENCY_MS", "AGENT_LOG_FILE", "AGENT_CACHE_NO_TTL",
                 "AGENT_DROP_MAX_TOKENS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fakes() -> tuple[FakeRedis, FakeVectorStore, FakeLLM]:
    return FakeRedis(), FakeVectorStore(), FakeLLM()


def _client(
    fakes: tuple[FakeRedis, FakeVectorStore, FakeLLM], settings: AgentSettings | None = None
) -> Iterator[TestClient]:
    redis, store, llm = fakes
    http = httpx.AsyncClient(transport=httpx.MockTransport(llm))
    app = create_app(
        settings or AgentSettings(model=ModelSettings(api_key=SecretStr("sk-unit-secret"))),
        redis=redis, vector_store=store, http_client=http, sleep=_no_sleep,
    )
    with TestClient(app) as client:
        yield client


@pytest.fixture
def client(fakes: tuple[FakeRedis, FakeVectorStore, FakeLLM]) -> Iterator[TestClient]:
    yield from _client(fakes)


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        got = dict(
            part.split("=", 1) for part in head[len(name) + 1 : -1].split(",") if part
        )
        if {k: v.strip('"') for k, v in got.items()} == labels:
            return float(value)
    raise AssertionError(f"no series {name}{labels} in /metrics")


# --------------------------------------------------------------------------- settings


def test_settings_defaults_without_file() -> None:
    s = load_settings(environ={})
    assert (s.model.model_name, s.vector_store.dim, s.cache.ttl) == ("gpt-4", 64, 3600)
    assert (s.version, s.replica, s.fail_health, s.error_rate) == ("v1", "0", False, 0.0)


def test_settings_file_then_environment_precedence(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(SEED_YAML)
    environ = {
        "REDIS_URL": "redis://127.0.0.1:7777/1",
        "MILVUS_HOST": "10.0.0.9",
        "MILVUS_PORT": "19999",
        "OPENAI_BASE_URL": "http://127.0.0.1:9999/v1",
        "OPENAI_API_KEY": "sk-primary-secret",
        "OPENAI_BACKUP_API_KEY": "sk-backup-secret",
        "AGENT_VERSION": "v2",
        "AGENT_REPLICA": "3",
        "AGENT_FAIL_HEALTH": "1",
        "AGENT_ERROR_RATE": "0.25",
        "AGENT_LATENCY_MS": "40",
    }
    s = load_settings(path, environ)
    assert s.environment == "staging"  # from the file
    assert s.cache.url == "redis://127.0.0.1:7777/1"
    assert (s.vector_store.host, s.vector_store.port) == ("10.0.0.9", 19999)
    assert s.vector_store.collection == "agent_knowledge"
    assert s.model.base_url == "http://127.0.0.1:9999/v1"
    # The backup keeps the URL its file section names.
    assert s.backup_base_url == "http://127.0.0.1:8080/v1"
    assert s.model.api_key is not None
    assert s.model.api_key.get_secret_value() == "sk-primary-secret"
    assert s.model.backup.api_key is not None
    assert s.model.backup.api_key.get_secret_value() == "sk-backup-secret"
    assert (s.version, s.replica, s.fail_health) == ("v2", "3", True)
    assert (s.error_rate, s.latency_ms) == (0.25, 40.0)


def test_settings_read_agent_config_and_named_key_variable(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {api_key_env: MY_KEY, api_key: sk-in-file}\nunknown: 1\n")
    s = load_settings(environ={"AGENT_CONFIG": str(path), "MY_KEY": "sk-from-env"})
    assert s.model.api_key is not None
    assert s.model.api_key.get_secret_value() == "sk-from-env"
    # A key written in the file is ignored: keys come only from the environment.
    assert load_settings(path, {}).model.api_key is None


def test_secret_is_masked_everywhere(tmp_path: Path) -> None:
    s = load_settings(environ={"OPENAI_API_KEY": "sk-very-secret"})
    for text in (repr(s), str(s), repr(s.model), s.model_dump_json(), json.dumps(s.model_dump(
            mode="json"))):
        assert "sk-very-secret" not in text
    endpoint = LLMEndpoint("primary", "gpt-4", "http://x/v1", s.model.api_key)
    assert "sk-very-secret" not in repr(endpoint)
    assert endpoint.headers() == {"Authorization": "Bearer sk-very-secret"}


def test_settings_errors_are_one_line_naming_the_source(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model: {temperature: hot}\n")
    with pytest.raises(AgentConfigError, match=r"bad\.yaml: model\.temperature: "):
        load_settings(path, {})
    with pytest.raises(ConfigError, match=r"MILVUS_PORT \(environment\): vector_store\.port"):
        load_settings(environ={"MILVUS_PORT": "abc"})
    with pytest.raises(AgentConfigError, match=r"AGENT_ERROR_RATE: expected a number"):
        load_settings(environ={"AGENT_ERROR_RATE": "often"})
    with pytest.raises(AgentConfigError, match=r"error_rate"):
        load_settings(environ={"AGENT_ERROR_RATE": "1.5"})
    with pytest.raises(AgentConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", {})
    path.write_text("- a list\n")
    with pytest.raises(AgentConfigError, match="expected a mapping"):
        load_settings(path, {})


# --------------------------------------------------------------------------- cache, faults, cost


def test_cache_key_normalisation() -> None:
    assert normalise("  Hello \n\t WORLD  ") == "hello world"
    key = answer_key("gpt-4", "How do I reset my password?")
    assert key.startswith(ANSWER_PREFIX) and len(key) == len(ANSWER_PREFIX) + 64
    assert key == answer_key("gpt-4", "  how do i   RESET my\npassword? ")
    assert key != answer_key("gpt-3.5-turbo", "How do I reset my password?")
    assert key != answer_key("gpt-4", "How do I reset my password")


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.29, 1 / 3, 0.5, 0.7, 1.0])
def test_error_rate_is_deterministic_and_exact(rate: float) -> None:
    flags = [should_fail(k, rate) for k in range(1, 1001)]
    for n in (1, 7, 10, 100, 1000):
        assert sum(flags[:n]) == math.floor(n * Fraction(repr(rate)))
    injector = ErrorInjector(rate)
    assert [injector.next() for _ in range(1000)] == flags


def test_error_rate_examples() -> None:
    assert [should_fail(k, 0.5) for k in range(1, 5)] == [False, True, False, True]
    # 100 * 0.29 is 28.999999999999996 in binary floats; the 100th request still fails.
    assert should_fail(100, 0.29)
    with pytest.raises(ValueError):
        should_fail(0, 0.5)


def test_cost_computation() -> None:
    cost = CostSection()
    assert cost.cost_usd("gpt-4", 1000, 500) == pytest.approx(0.06)
    assert cost.cost_usd("text-embedding-3-small", 1_000_000) == pytest.approx(0.02)
    assert cost.cost_usd("unpriced-model", 10**6, 10**6) == 0.0


def test_retry_after_header_rounds_up() -> None:
    assert RateDecision(False, 0.05).retry_after_header == "1"
    assert RateDecision(False, 2.2).retry_after_header == "3"


# --------------------------------------------------------------------------- retry policy


def _run_llm(handler: Callable[[httpx.Request], httpx.Response], retries: int = 3
             ) -> tuple[Any, list[float], list[tuple[str, str]]]:
    slept: list[float] = []
    attempts: list[tuple[str, str]] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            llm = LLMClient(http, RetryPolicy(retries=retries), timeout=5,
                            on_attempt=lambda m, o: attempts.append((m, o)), sleep=sleep)
            ep = LLMEndpoint("primary", "gpt-4", "http://llm.test/v1", SecretStr("sk-x"))
            try:
                return await llm.chat(ep, [{"role": "user", "content": "hi"}])
            except LLMError as exc:
                return exc

    return asyncio.run(go()), slept, attempts


def _sequence(*responses: httpx.Response | Exception) -> Callable[[httpx.Request], httpx.Response]:
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return handler


_OK = httpx.Response(200, json={"choices": [{"message": {"content": "hi"},
                                             "finish_reason": "stop"}],
                                "usage": {"prompt_tokens": 5, "completion_tokens": 2}})


def test_retry_on_5xx_then_success_with_exponential_backoff() -> None:
    result, slept, attempts = _run_llm(_sequence(httpx.Response(500), httpx.Response(503), _OK))
    assert result.text == "hi" and result.usage.total_tokens == 7
    assert slept == [0.05, 0.1]
    assert attempts == [("gpt-4", "error"), ("gpt-4", "error"), ("gpt-4", "ok")]


def test_retry_on_connect_error_and_429_with_retry_after() -> None:
    connect = httpx.ConnectError("refused")
    result, slept, _ = _run_llm(
        _sequence(connect, httpx.Response(429, headers={"Retry-After": "0.5"}), _OK)
    )
    assert result.text == "hi"
    assert slept == [0.05, 0.5]


def test_retries_are_bounded_and_timeouts_are_llm_timeout() -> None:
    result, slept, attempts = _run_llm(
        _sequence(*[httpx.ReadTimeout("slow") for _ in range(4)])
    )
    assert isinstance(result, LLMError) and result.kind == "llm_timeout"
    assert len(attempts) == 4 and slept == [0.05, 0.1, 0.2]
    assert "sk-x" not in str(result)


def test_no_retry_on_client_errors() -> None:
    result, slept, attempts = _run_llm(_sequence(httpx.Response(401)))
    assert isinstance(result, LLMError) and result.kind == "llm_error"
    assert result.status == 401 and slept == [] and len(attempts) == 1


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(retries=10)
    assert [policy.delay(n) for n in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert policy.delay(0, retry_after=30) == 1.0


# --------------------------------------------------------------------------- the app


def test_fresh_metrics_have_preinitialised_series(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert _metric(text, "requests_total", type="chat") == 0
    assert _metric(text, "request_latency_seconds_count", type="chat") == 0
    assert 'request_latency_seconds_bucket{le="0.005",type="chat"} 0.0' in text
    assert 'request_latency_seconds_bucket{le="10.0",type="chat"} 0.0' in text
    for kind in ("llm_error", "llm_timeout", "vector_store_error", "cache_error",
                 "rate_limited", "injected", "internal"):
        assert _metric(text, "requests_error_total", error=kind) == 0
    assert _metric(text, "token_usage_total", model="gpt-4", kind="prompt") == 0
    assert _metric(text, "token_usage_total", model="gpt-4", kind="completion") == 0
    assert _metric(text, "token_usage_total", model="text-embedding-3-small",
                   kind="embedding") == 0
    assert _metric(text, "llm_cost_usd_total", model="gpt-4") == 0
    assert _metric(text, "cache_requests_total", result="hit") == 0
    assert _metric(text, "agent_info", version="v1", replica="0") == 1


def test_two_apps_in_one_process_have_separate_registries(
    fakes: tuple[FakeRedis, FakeVectorStore, FakeLLM],
) -> None:
    first = create_app(AgentSettings(replica="1"), redis=fakes[0], vector_store=fakes[1])
    second = create_app(AgentSettings(replica="2"), redis=fakes[0], vector_store=fakes[1])
    assert first.state.metrics.registry is not second.state.metrics.registry


def test_chat_miss_then_cached_hit_makes_no_llm_call(
    client: TestClient, fakes: tuple[FakeRedis, FakeVectorStore, FakeLLM]
) -> None:
    redis, store, llm = fakes
    first = client.post("/chat", json={"message": "How do I reset my password?"})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["cached"] is False and body["answer"] == "Use reset."
    assert body["sources"][0] == {"id": 1, "title": "Resetting your password",
                                  "source": "password-reset.md", "score": 0.91}
    assert body["usage"] == {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}
    assert (body["version"], body["replica"], body["model"]) == ("v1", "0", "gpt-4")
    assert first.headers["X-Agent-Version"] == "v1" and first.headers["X-Agent-Replica"] == "0"
    assert llm.paths() == ["/v1/embeddings", "/v1/chat/completions"]
    assert llm.requests[0].headers["authorization"] == "Bearer sk-unit-secret"
    embed_body = json.loads(llm.requests[0].content)
    assert embed_body == {"model": "text-embedding-3-small",
                          "input": ["How do I reset my password?"], "dimensions": 64}
    chat_body = json.loads(llm.requests[1].content)
    assert chat_body["model"] == "gpt-4" and chat_body["max_tokens"] == 2000
    system = chat_body["messages"][0]["content"]
    assert system.index("Resetting your password") < system.index("Click forgot.")
    key = answer_key("gpt-4", "How do I reset my password?")
    assert redis.ttls[key] == 3600

    again = client.post("/chat", json={"message": "  how do I reset my PASSWORD? "})
    assert again.status_code == 200
    assert again.json()["cached"] is True
    assert again.json()["usage"] == body["usage"]
    assert len(llm.requests) == 2 and store.searches == 1

    text = client.get("/metrics").text
    assert _metric(text, "requests_total", type="chat") == 2
    assert _metric(text, "request_latency_seconds_count", type="chat") == 2
    assert _metric(text, "cache_requests_total", result="hit") == 1
    assert _metric(text, "cache_requests_total", result="miss") == 1
    assert _metric(text, "token_usage_total", model="gpt-4", kind="prompt") == 120
    assert _metric(text, "token_usage_total", model="gpt-4", kind="completion") == 30
    assert _metric(text, "token_usage_total", model="text-embedding-3-small",
                   kind="embedding") == 7
    assert _metric(text, "llm_cost_usd_total", model="gpt-4") == pytest.approx(
        (120 * 30 + 30 * 60) / 1e6)
    assert _metric(text, "llm_requests_total", model="gpt-4", outcome="ok") == 1


def test_chat_validation(client: TestClient) -> None:
    assert client.post("/chat", json={"message": ""}).status_code == 422
    too_long = client.post("/chat", json={"message": "x" * 4001})
    assert too_long.status_code == 422 and too_long.json()["error"] == "invalid_request"
    assert client.post("/chat", content=b"not json").status_code == 422


def test_llm_failure_is_502_after_retries(
    client: TestClient, fakes: tuple[FakeRedis, FakeVectorStore, FakeLLM]
) -> None:
    fakes[2].fail_with = 503
    response = client.post("/chat", json={"message": "hello"})
    assert response.status_code == 502
    assert response.json()["error"] == "llm_error"
    assert "Traceback" not in response.text and "sk-unit-secret" not in response.text
    assert len(fakes[2].requests) == 4  # 1 + retry_count
    assert _metric(client.get("/metrics").text, "requests_error_total", error="llm_error") == 1


def test_vector_store_failure_is_503(
    client: TestClient, fakes: tuple[FakeRedis, FakeVectorStore, FakeLLM]
) -> None:
    fakes[1].error = "Milvus 127.0.0.1:19530 search failed: unavailable"
    response = client.post("/chat", json={"message": "hello"})
    assert response.status_code == 503
    assert response.json()["error"] == "vector_store_error"
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json()["checks"]["redis"] == "ok"
    assert "unavailable" in health.json()["checks"]["milvus"]


def test_redis_down_answers_without_cache_and_counts_cache_error(
    client: TestClient, fakes: tuple[FakeRedis, FakeVectorStore, FakeLLM]
) -> None:
    fakes[0].down = True
    response = client.post("/chat", json={"message": "hello"})
    assert response.status_code == 200 and response.json()["cached"] is False
    text = client.get("/metrics").text
    assert _metric(text, "requests_error_total", error="cache_error") == 1
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["checks"]["redis"] != "ok"
    assert client.post("/admin/cache/clear").status_code == 503


def test_health_ok(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": "v1", "replica": "0",
                               "checks": {"redis": "ok", "milvus": "ok"}}
    assert client.get("/version").json() == {"version": "v1", "replica": "0",
                                             "model": "gpt-4", "environment": "dev"}


def test_fault_knobs(fakes: tuple[FakeRedis, FakeVectorStore, FakeLLM]) -> None:
    settings = AgentSettings(fail_health=True, error_rate=0.5, version="v9", replica="2")
    for client in _client(fakes, settings):
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "failing"
        assert health.json()["reason"] == "AGENT_FAIL_HEALTH"
        codes = [client.post("/chat", json={"message": f"q{i}"}).status_code for i in range(4)]
        assert codes == [200, 500, 200, 500]
        text = client.get("/metrics").text
        assert _metric(text, "requests_error_total", error="injected") == 2
        assert _metric(text, "requests_total", type="chat") == 4
        assert _metric(text, "agent_info", version="v9", replica="2") == 1


def test_cost_defect_knobs_cache_without_ttl_and_drop_max_tokens(
        fakes: tuple[FakeRedis, FakeVectorStore, FakeLLM]) -> None:
    redis, _, llm = fakes
    settings = AgentSettings(cache_without_ttl=True, drop_max_tokens=True)
    for client in _client(fakes, settings):
        assert client.post("/chat", json={"message": "How do I reset?"}).status_code == 200
    key = answer_key("gpt-4", "How do I reset?")
    assert key in redis.data and key not in redis.ttls  # SET, no expiry
    chat_body = json.loads(llm.requests[-1].content)
    assert "max_tokens" not in chat_body and chat_body["model"] == "gpt-4"
    env = {"AGENT_CACHE_NO_TTL": "1", "AGENT_DROP_MAX_TOKENS": "true", "AGENT_LOG_FILE": "/x.log"}
    s = load_settings(environ=env)
    assert (s.cache_without_ttl, s.drop_max_tokens, s.log_file) == (True, True, "/x.log")
    assert (load_settings(environ={}).cache_without_ttl, load_settings(environ={}).log_file) == \
        (False, None)


def test_every_request_is_one_log_line_with_the_reply_request_id(
        fakes: tuple[FakeRedis, FakeVectorStore, FakeLLM], tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    settings = AgentSettings(log_file=str(path), replica="agent-1", version="v2")
    for client in _client(fakes, settings):
        replies = [client.post("/chat", json={"message": "How do I reset?"}),
                   client.post("/chat", json={"message": ""}),            # 422
                   client.get("/health"),
                   client.post("/chat", json={"message": "q"}, headers={"X-Request-Id": "given-1"}),
                   client.post("/chat", json={"message": "q"}, headers={"X-Request-Id": "bad id"})]
        first = [json.loads(line) for line in path.read_text().splitlines()]
        # what logrotate does: the file is moved away, then the agent is told to reopen
        path.rename(tmp_path / "agent.log.1")
        client.app.state.request_log.reopen()
        replies.append(client.get("/version"))
        second = [json.loads(line) for line in path.read_text().splitlines()]
    ids = [r.headers["X-Request-Id"] for r in replies]
    assert [line["request_id"] for line in first + second] == ids
    assert ids[3] == "given-1" and ids[4] != "bad id" and len(set(ids)) == 6
    assert [line["status"] for line in first] == [200, 422, 200, 200, 200]
    assert len(second) == 1 and second[0]["path"] == "/version"
    assert first[0]["method"] == "POST" and first[0]["path"] == "/chat"
    assert (first[0]["replica"], first[0]["version"]) == ("agent-1", "v2")
    assert first[0]["duration_ms"] >= 0 and first[0]["ts"].endswith("Z")
    assert len((tmp_path / "agent.log.1").read_text().splitlines()) == 5


def test_rate_limit_admin_and_429(client: TestClient) -> None:
    assert client.get("/admin/rate-limit").json() == {
        "enabled": False, "requests_per_second": 20.0, "burst": 20}
    updated = client.post("/admin/rate-limit", json={"enabled": True, "burst": 2})
    assert updated.json() == {"enabled": True, "requests_per_second": 20.0, "burst": 2}
    headers = {"X-Client-Id": "tenant-a"}
    codes = [client.post("/chat", json={"message": "hi"}, headers=headers).status_code
             for _ in range(3)]
    assert codes == [200, 200, 429]
    limited = client.post("/chat", json={"message": "hi"}, headers=headers)
    assert limited.json() == {"error": "rate_limited"}
    assert limited.headers["Retry-After"] == "1"
    # Another client has its own bucket.
    other = client.post("/chat", json={"message": "hi"}, headers={"X-Client-Id": "b"})
    assert other.status_code == 200
    assert client.post("/admin/rate-limit", json={"burst": 0}).status_code == 422


def test_llm_switch_and_cache_clear(
    client: TestClient, fakes: tuple[FakeRedis, FakeVectorStore, FakeLLM]
) -> None:
    redis, _, llm = fakes
    assert client.get("/admin/llm").json()["use"] == "primary"
    client.post("/chat", json={"message": "hello"})
    redis.data["agent:other"] = "keep me"
    switched = client.post("/admin/llm", json={"use": "backup"}).json()
    assert switched["use"] == "backup" and switched["model"] == "gpt-3.5-turbo"
    response = client.post("/chat", json={"message": "hello"})
    assert response.json()["model"] == "gpt-3.5-turbo"
    assert json.loads(llm.requests[-1].content)["model"] == "gpt-3.5-turbo"
    assert "authorization" not in llm.requests[-1].headers  # no backup key configured
    assert client.post("/admin/cache/clear").json() == {"deleted": 2}
    assert redis.data.get("agent:other") == "keep me"
    assert client.post("/admin/llm", json={"use": "other"}).status_code == 422


def test_main_module_builds_app_lazily(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib

    main = importlib.import_module("agentverify.reference_agent.main")
    monkeypatch.setattr(main, "_app", None)
    assert main.app.state.settings.version == "v1"
    monkeypatch.setattr(main, "_app", None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("cache: {ttl: 0}\n")
    monkeypatch.setenv("AGENT_CONFIG", str(bad))
    with pytest.raises(SystemExit):
        _ = main.app
    monkeypatch.setattr(main, "_app", None)


# --------------------------------------------------------------------------- prompt and ingest


def test_build_messages_titles_first() -> None:
    messages = build_messages("q?", [Passage(1, "Title A", "a.md", "text a", 0.5)])
    assert messages[1] == {"role": "user", "content": "q?"}
    assert "[1] Title A (a.md)\ntext a" in messages[0]["content"]


def test_split_passages_merges_short_and_cuts_long() -> None:
    text = "# Title\n\nshort.\n\nalso short.\n\n" + ("A long sentence here. " * 200)
    passages = split_passages(text, min_chars=100, max_chars=500)
    assert passages[0].startswith("# Title\n\nshort.\n\nalso short.")
    assert all(len(p) <= 500 for p in passages)
    assert "".join(passages).count("A long sentence here.") == 200


def test_load_documents_titles_and_stable_ids(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("intro\n\n## Second heading\n\ntext")
    (tmp_path / "a-notes.txt").write_text("plain text only")
    (tmp_path / "empty.md").write_text("  \n")
    (tmp_path / "skip.json").write_text("{}")
    docs = load_documents(tmp_path)
    assert [(d.source, d.title) for d in docs] == [("a-notes.txt", "A notes"),
                                                  ("b.md", "Second heading")]
    rows = passages_of(docs)
    assert rows[0].id == stable_id("a-notes.txt", 0)
    assert [r.id for r in passages_of(load_documents(tmp_path))] == [r.id for r in rows]
    assert all(0 <= r.id < 2**63 for r in rows)


def test_ingest_command_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agentverify.reference_agent.ingest import main

    assert main(["--knowledge", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ingest: error: knowledge directory") and err.count("\n") == 1
    assert main(["--knowledge", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
