"""Unit tests of the LLM stub: token accounting, answers, embeddings, ledger, faults."""

from __future__ import annotations

import asyncio
import base64
import re
import struct
import time
import warnings

import httpx
import pytest

from agentverify.llm_stub import cosine, count_tokens, embed, generate_answer, prompt_tokens
from agentverify.llm_stub.app import create_app
from agentverify.llm_stub.tokens import cut_tokens

try:
    from starlette.exceptions import StarletteDeprecationWarning
except ImportError:  # older Starlette: no such warning class
    StarletteDeprecationWarning = DeprecationWarning  # type: ignore[assignment,misc]

with warnings.catch_warnings():
    # Starlette 1.x warns on import that its TestClient prefers the httpx2 package (a
    # UserWarning subclass); it concerns the test client's transport, not the stub.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

KEY = "sk-stub-test-7f3a9c"
TOKEN = re.compile(r"\w+|[^\w\s]")
CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"


def n_tokens(text: str) -> int:
    """An independent count, straight from the documented regex."""
    return len(TOKEN.findall(text))


def chat_body(question: str = "How do I reset my password?", model: str = "gpt-4o-mini", **extra):
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "Answer from the context.\nContext:\n# Password reset\n"
             "Open Settings and choose Reset password. A link is mailed to you."},
            {"role": "user", "content": question},
        ],
        "temperature": 0.2,
        **extra,
    }


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(api_keys=[]))


@pytest.fixture
def authed(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("LLM_STUB_API_KEYS", f" other-key , {KEY} ,")
    return TestClient(create_app())


# --- tokens -----------------------------------------------------------------------


def test_count_tokens_follows_the_documented_regex() -> None:
    assert count_tokens("How do I reset my password?") == 7
    assert count_tokens("") == 0
    assert count_tokens("e-mail: a_b 42!!") == 8  # e - mail : a_b 42 ! !
    text = "Ünïcode wörds, snake_case and 3.14 — fine?"
    assert count_tokens(text) == n_tokens(text)


def test_cut_tokens_gives_exactly_n_tokens() -> None:
    text = "Reset it, then log in... now!"
    for n in range(0, n_tokens(text) + 3):
        assert n_tokens(cut_tokens(text, n)) == min(n, n_tokens(text))


def test_prompt_tokens_formula() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"}]
    assert prompt_tokens(messages) == (3 + 4) + (3 + 4) + 2


# --- auth -------------------------------------------------------------------------


def test_no_keys_means_no_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_STUB_API_KEYS", raising=False)
    assert TestClient(create_app()).post(CHAT, json=chat_body()).status_code == 200


def test_auth_accepts_listed_keys_and_refuses_others(authed: TestClient) -> None:
    assert authed.post(CHAT, json=chat_body(), headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    other = {"Authorization": "Bearer other-key"}
    assert authed.post(EMB, json={"model": "e", "input": "x"}, headers=other).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong-secret-123"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": f"Bearer {KEY}x"}):
        for path, body in ((CHAT, chat_body()), (EMB, {"model": "e", "input": "x"})):
            r = authed.post(path, json=body, headers=headers)
            assert r.status_code == 401
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error"
            assert error["code"] == "invalid_api_key"
            assert "wrong-secret-123" not in r.text and KEY not in r.text
    assert authed.get("/v1/models").status_code == 401
    # Refused requests bill nothing.
    assert authed.get("/ledger").json()["requests"] == 2


def test_the_key_never_appears_in_any_response(authed: TestClient) -> None:
    ok = {"Authorization": f"Bearer {KEY}"}
    responses = [
        authed.post(CHAT, json=chat_body(), headers=ok),
        authed.post(CHAT, json={"model": "m", "messages": []}, headers=ok),
        authed.post(EMB, json={"model": "e", "input": ["a", "b"]}, headers=ok),
        authed.post(CHAT, json=chat_body(), headers={"Authorization": f"Bearer {KEY}-bad"}),
        authed.get("/v1/models", headers=ok),
        authed.get("/ledger"),
        authed.get("/faults"),
        authed.get("/metrics"),
        authed.get("/health"),
    ]
    assert [r.status_code for r in responses[:5]] == [200, 400, 200, 401, 200]
    for r in responses:
        assert KEY not in r.text


# --- chat ---------------------------------------------------------------------------


def test_chat_response_shape_and_usage_formula(client: TestClient) -> None:
    body = chat_body()
    r = client.post(CHAT, json=body)
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "gpt-4o-mini"
    assert data["id"].startswith("chatcmpl-") and isinstance(data["created"], int)
    (choice,) = data["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    content = choice["message"]["content"]
    assert content.startswith("According to Password reset: Open Settings and choose Reset password.")
    usage = data["usage"]
    assert usage["prompt_tokens"] == sum(n_tokens(m["content"]) + 4 for m in body["messages"]) + 2
    assert usage["completion_tokens"] == n_tokens(content)
    assert 24 <= usage["completion_tokens"] <= 120
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_is_deterministic_across_calls_and_clients(client: TestClient) -> None:
    first = client.post(CHAT, json=chat_body()).json()
    again = client.post(CHAT, json=chat_body(temperature=1.5)).json()
    other = TestClient(create_app(api_keys=[])).post(CHAT, json=chat_body()).json()
    content = first["choices"][0]["message"]["content"]
    assert again["choices"][0]["message"]["content"] == content
    assert other["choices"][0]["message"]["content"] == content
    assert other["usage"] == first["usage"]
    assert generate_answer("gpt-4o-mini", chat_body()["messages"]) == (content, "stop")
    # The answer depends on the model and the messages.
    other_model = client.post(CHAT, json=chat_body(model="other")).json()
    assert other_model["choices"][0]["message"]["content"] != content
    lengths = {
        client.post(CHAT, json=chat_body(question=f"question {i}")).json()["usage"]["completion_tokens"]
        for i in range(12)
    }
    assert len(lengths) > 3  # lengths are spread by the hash, not constant


def test_answer_without_context_quotes_the_question(client: TestClient) -> None:
    r = client.post(CHAT, json={"model": "m", "messages": [{"role": "user", "content": "What is Redis?"}]})
    assert r.json()["choices"][0]["message"]["content"].startswith("Regarding What is Redis?:")


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_truncates_with_finish_reason_length(client: TestClient, field: str) -> None:
    full = client.post(CHAT, json=chat_body()).json()
    target = full["usage"]["completion_tokens"]
    limit = target - 5
    data = client.post(CHAT, json=chat_body(**{field: limit})).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == limit == n_tokens(choice["message"]["content"])
    assert full["choices"][0]["message"]["content"].startswith(choice["message"]["content"])
    assert data["usage"]["prompt_tokens"] == full["usage"]["prompt_tokens"]
    one = client.post(CHAT, json=chat_body(**{field: 1})).json()
    assert one["usage"]["completion_tokens"] == 1 and one["choices"][0]["message"]["content"] == "According"
    roomy = client.post(CHAT, json=chat_body(**{field: target})).json()
    assert roomy["choices"][0]["finish_reason"] == "stop"
    assert roomy["usage"]["completion_tokens"] == target


def test_truncation_is_exact_for_awkward_text() -> None:
    messages = [
        {"role": "system", "content": "Title: a--b\n'x' (y)...z?! é_é"},
        {"role": "user", "content": "??"},
    ]
    full, _ = generate_answer("m", messages)
    for limit in range(1, n_tokens(full)):
        text, reason = generate_answer("m", messages, limit)
        assert (n_tokens(text), reason) == (limit, "length")


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": []},
        {"model": "m"},
        {"model": "m", "messages": [{"role": "wizard", "content": "hi"}]},
        {"model": "m", "messages": [{"content": "hi"}]},
        {"model": "m", "messages": [{"role": "user", "content": 42}]},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        ["not", "an", "object"],
    ],
)
def test_bad_chat_requests_get_openai_400(client: TestClient, body: object) -> None:
    r = client.post(CHAT, json=body)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert client.get("/ledger").json()["errors"] == 1


def test_invalid_json_is_a_400(client: TestClient) -> None:
    r = client.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_content_parts_are_accepted(client: TestClient) -> None:
    parts = [{"type": "text", "text": "Hello"}, {"type": "image_url", "image_url": {"url": "x"}}]
    r = client.post(CHAT, json={"model": "m", "messages": [{"role": "user", "content": parts}]})
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == (1 + 4) + 2


# --- embeddings ----------------------------------------------------------------------


def test_embedding_similarity_ordering() -> None:
    query = embed("how do I reset my password")
    near = cosine(query, embed("password reset steps"))
    for unrelated in ("the weather in paris is sunny today", "quarterly revenue grew by ten percent"):
        assert near > cosine(query, embed(unrelated)) + 0.3
    assert embed("Password Reset") == embed("password reset")


def test_embeddings_endpoint_shape_dimensions_and_usage(client: TestClient) -> None:
    inputs = ["password reset steps", "How do I reset my password?", ""]
    r = client.post(EMB, json={"model": "text-embedding-3-small", "input": inputs})
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "list" and data["model"] == "text-embedding-3-small"
    assert [d["index"] for d in data["data"]] == [0, 1, 2]
    for d in data["data"]:
        assert d["object"] == "embedding" and len(d["embedding"]) == 64
        assert sum(x * x for x in d["embedding"]) == pytest.approx(1.0)
    assert data["usage"] == {"prompt_tokens": 3 + 7 + 0, "total_tokens": 10}
    assert data["data"][0]["embedding"] == pytest.approx(embed(inputs[0], 64))

    single = client.post(EMB, json={"model": "e", "input": "hello world", "dimensions": 256}).json()
    assert len(single["data"]) == 1 and len(single["data"][0]["embedding"]) == 256
    for dim in (2, 4096):
        got = client.post(EMB, json={"model": "e", "input": "x", "dimensions": dim}).json()
        assert len(got["data"][0]["embedding"]) == dim


def test_embeddings_base64_matches_floats(client: TestClient) -> None:
    body = {"model": "e", "input": "hello world", "dimensions": 8}
    floats = client.post(EMB, json=body).json()["data"][0]["embedding"]
    packed = client.post(EMB, json={**body, "encoding_format": "base64"}).json()["data"][0]["embedding"]
    assert list(struct.unpack("<8f", base64.b64decode(packed))) == pytest.approx(floats, abs=1e-6)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "e", "input": "x", "dimensions": 1},
        {"model": "e", "input": "x", "dimensions": 4097},
        {"model": "e", "input": "x", "dimensions": "64"},
        {"model": "e", "input": []},
        {"model": "e", "input": [1, 2, 3]},
        {"input": "x"},
        {"model": "e", "input": "x", "encoding_format": "hex"},
    ],
)
def test_bad_embedding_requests_get_openai_400(client: TestClient, body: dict) -> None:
    r = client.post(EMB, json=body)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


# --- ledger --------------------------------------------------------------------------


def test_ledger_is_exact_after_a_mix_and_resets(client: TestClient) -> None:
    expected_prompt = expected_completion = expected_emb = 0
    for i in range(5):
        usage = client.post(CHAT, json=chat_body(question=f"q{i}", max_tokens=30 + i)).json()["usage"]
        expected_prompt += usage["prompt_tokens"]
        expected_completion += usage["completion_tokens"]
    for i in range(3):
        usage = client.post(EMB, json={"model": "emb", "input": [f"doc {i}", "two words"]}).json()["usage"]
        expected_emb += usage["prompt_tokens"]
    client.post(CHAT, json={"model": "gpt-4o-mini", "messages": []})  # a 400

    ledger = client.get("/ledger").json()
    assert ledger["requests"] == 8 and ledger["errors"] == 1
    assert ledger["prompt_tokens"] == expected_prompt
    assert ledger["completion_tokens"] == expected_completion
    assert ledger["embedding_tokens"] == expected_emb == 3 * (2 + 2)
    assert ledger["models"]["gpt-4o-mini"] == {
        "requests": 5,
        "errors": 1,
        "prompt_tokens": expected_prompt,
        "completion_tokens": expected_completion,
        "embedding_tokens": 0,
        "chat_requests": 5,
        "embedding_requests": 0,
    }
    assert ledger["models"]["emb"]["embedding_requests"] == 3

    zeroed = client.post("/ledger/reset").json()
    assert zeroed["models"] == {}
    counters = ("requests", "errors", "prompt_tokens", "completion_tokens", "embedding_tokens")
    assert all(zeroed[k] == 0 for k in counters)
    assert client.get("/ledger").json() == zeroed


def test_ledger_is_exact_under_concurrency() -> None:
    app = create_app(api_keys=[])

    async def main() -> list[dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://stub") as ac:
            await ac.post("/faults", json={"latency_ms": 5})  # force interleaving at the await
            calls = [ac.post(CHAT, json=chat_body(question=f"q{i % 7}")) for i in range(60)]
            calls += [ac.post(EMB, json={"model": "emb", "input": f"text {i}"}) for i in range(40)]
            return [r.json() for r in await asyncio.gather(*calls)]

    results = asyncio.run(main())
    ledger = app.state.ledger.snapshot()
    assert ledger["requests"] == 100 and ledger["errors"] == 0
    assert ledger["prompt_tokens"] == sum(r["usage"]["prompt_tokens"] for r in results[:60])
    assert ledger["completion_tokens"] == sum(r["usage"]["completion_tokens"] for r in results[:60])
    assert ledger["embedding_tokens"] == sum(r["usage"]["prompt_tokens"] for r in results[60:]) == 80


# --- faults --------------------------------------------------------------------------


def test_error_rate_half_fails_exactly_every_second_request(client: TestClient) -> None:
    assert client.post("/faults", json={"error_rate": 0.5}).status_code == 200
    codes = [client.post(CHAT, json=chat_body()).status_code for _ in range(10)]
    assert codes == [200, 500] * 5
    failed = client.post(CHAT, json=chat_body())
    assert failed.status_code == 200  # 11th
    failed = client.post(CHAT, json=chat_body())
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "server_error"
    state = client.get("/faults").json()
    assert state["error_rate"] == 0.5 and state["matched"] == 12 and state["injected"] == 6


def test_error_rate_one_fails_all_and_status_code_is_honoured(client: TestClient) -> None:
    client.post("/faults", json={"error_rate": 1.0, "status_code": 503})
    assert {client.post(CHAT, json=chat_body()).status_code for _ in range(4)} == {503}
    assert client.post(EMB, json={"model": "e", "input": "x"}).status_code == 503


def test_fractional_rate_is_deterministic(client: TestClient) -> None:
    client.post("/faults", json={"error_rate": 0.25, "status_code": 429})
    codes = [client.post(EMB, json={"model": "e", "input": "x"}).status_code for _ in range(8)]
    assert codes == [200, 200, 200, 429] * 2


def test_failed_requests_count_as_errors_not_tokens(client: TestClient) -> None:
    client.post("/faults", json={"error_rate": 0.5})
    good = [client.post(CHAT, json=chat_body()) for _ in range(6)]
    ok_usage = [r.json()["usage"] for r in good if r.status_code == 200]
    ledger = client.get("/ledger").json()
    assert ledger["requests"] == 3 and ledger["errors"] == 3
    assert ledger["prompt_tokens"] == sum(u["prompt_tokens"] for u in ok_usage)
    assert ledger["completion_tokens"] == sum(u["completion_tokens"] for u in ok_usage)
    assert ledger["models"]["gpt-4o-mini"]["errors"] == 3


def test_faults_are_scoped_by_model_and_endpoint(client: TestClient) -> None:
    client.post("/faults", json={"error_rate": 1.0, "models": ["bad-model"], "endpoints": ["chat"]})
    assert client.post(CHAT, json=chat_body(model="good-model")).status_code == 200
    assert client.post(EMB, json={"model": "bad-model", "input": "x"}).status_code == 200
    assert client.post(CHAT, json=chat_body(model="bad-model")).status_code == 500
    assert client.get("/faults").json()["matched"] == 1


def test_delete_clears_faults(client: TestClient) -> None:
    client.post("/faults", json={"error_rate": 1.0, "latency_ms": 10})
    cleared = client.delete("/faults").json()
    assert cleared["error_rate"] == 0 and cleared["latency_ms"] == 0 and cleared["active"] is False
    assert client.get("/faults").json() == cleared
    assert client.post(CHAT, json=chat_body()).status_code == 200


def test_latency_is_added_to_matching_requests(client: TestClient) -> None:
    client.post("/faults", json={"latency_ms": 150, "endpoints": ["embeddings"]})
    start = time.perf_counter()
    assert client.post(EMB, json={"model": "e", "input": "x"}).status_code == 200
    assert time.perf_counter() - start >= 0.14
    start = time.perf_counter()
    assert client.post(CHAT, json=chat_body()).status_code == 200
    assert time.perf_counter() - start < 0.14


@pytest.mark.parametrize(
    "body",
    [
        {"error_rate": 1.5},
        {"error_rate": -0.1},
        {"status_code": 200},
        {"latency_ms": -1},
        {"endpoints": ["completions"]},
        {"models": "gpt-4o"},
        {"error_rat": 0.5},
    ],
)
def test_bad_fault_body_is_422(client: TestClient, body: dict) -> None:
    assert client.post("/faults", json=body).status_code == 422
    assert client.get("/faults").json()["active"] is False


# --- health and metrics ---------------------------------------------------------------


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_metrics_expose_requests_and_tokens(client: TestClient) -> None:
    usage = client.post(CHAT, json=chat_body()).json()["usage"]
    client.post(EMB, json={"model": "emb", "input": "two words"})
    client.post("/faults", json={"error_rate": 1.0, "status_code": 502})
    client.post(CHAT, json=chat_body())
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'llm_stub_requests_total{endpoint="chat",model="gpt-4o-mini",status="200"} 1.0' in text
    assert 'llm_stub_requests_total{endpoint="chat",model="gpt-4o-mini",status="502"} 1.0' in text
    prompt = float(usage["prompt_tokens"])
    assert f'llm_stub_tokens_total{{kind="prompt",model="gpt-4o-mini"}} {prompt}' in text
    assert 'llm_stub_tokens_total{kind="completion",model="gpt-4o-mini"}' in text
    assert 'llm_stub_tokens_total{kind="embedding",model="emb"} 2.0' in text
    # Each app has its own registry: a fresh app starts from nothing.
    fresh = TestClient(create_app(api_keys=[])).get("/metrics").text
    assert "llm_stub_requests_total{" not in fresh
