"""Unit tests of the LLM stub: tokens, answers, streams, embeddings, ledger and call log, faults."""

from __future__ import annotations

import array
import asyncio
import base64
import json
import re
import struct
import time
import warnings

import httpx
import pytest

from agentverify.llm_stub import cosine, count_tokens, embed, generate_answer, prompt_tokens
from agentverify.llm_stub.app import create_app
from agentverify.llm_stub.faults import FaultInjector, FaultSettings
from agentverify.llm_stub.state import Ledger
from agentverify.llm_stub.stream import split_deltas
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
    assert 400 <= usage["completion_tokens"] <= 1500  # no limit sent: a long answer
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
    full = client.post(CHAT, json=chat_body(**{field: 4096})).json()  # the concise answer, uncut
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
    full, _ = generate_answer("m", messages, 10_000)
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
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": True}},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
         "stream_options": {"include_usage": "yes"}},
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
        "calls_without_max_tokens": 0,  # every chat sent max_tokens (the 400 is no call)
        "largest_max_tokens": 34,
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


# --- streaming ----------------------------------------------------------------------


def sse_events(text: str) -> list[str]:
    """The ``data:`` payloads of a server-sent event stream, in order."""
    events = [block for block in text.split("\n\n") if block]
    assert all(block.startswith("data: ") for block in events), events[:3]
    return [block.removeprefix("data: ") for block in events]


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_sends_openai_chunks_and_bills_as_unstreamed(client: TestClient, include_usage: bool) -> None:
    body = chat_body(max_tokens=300)
    plain = client.post(CHAT, json=body).json()
    before = client.get("/ledger").json()
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    r = client.post(CHAT, json={**body, "stream": True, **extra})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    if include_usage:
        *chunks, last = chunks
        assert last["choices"] == [] and last["usage"] == plain["usage"]
        assert all(c["usage"] is None for c in chunks)
    else:
        assert all("usage" not in c for c in chunks)
    final = chunks[-1]["choices"][0]
    assert final["delta"] == {} and final["finish_reason"] == plain["choices"][0]["finish_reason"]
    deltas = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert "".join(deltas) == plain["choices"][0]["message"]["content"]
    assert len(deltas) == plain["usage"]["completion_tokens"]  # one chunk per token
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    after = client.get("/ledger").json()
    for key in ("prompt_tokens", "completion_tokens"):
        assert after[key] - before[key] == plain["usage"][key]
    assert after["chat_requests"] - before["chat_requests"] == 1


def test_a_cut_stream_ends_with_finish_reason_length(client: TestClient) -> None:
    r = client.post(CHAT, json=chat_body(max_tokens=3, stream=True))
    chunks = [json.loads(e) for e in sse_events(r.text)[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "According to Password"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_split_deltas_rejoins_exactly() -> None:
    for text in ("Reset it, then log in... now!", "  lead and trail  ", "", "é_é -- 3.14?!"):
        pieces = split_deltas(text)
        assert "".join(pieces) == text
        assert len(pieces) == max(n_tokens(text), 1 if text else 0)


# --- answer length and limits ----------------------------------------------------------


def test_an_unbounded_request_gets_a_long_deterministic_answer(client: TestClient) -> None:
    lengths = []
    for i in range(8):
        body = chat_body(question=f"Tell me everything about topic {i}")
        first = client.post(CHAT, json=body).json()
        again = client.post(CHAT, json=body).json()
        assert first["choices"][0]["message"] == again["choices"][0]["message"]
        n = first["usage"]["completion_tokens"]
        assert 400 <= n <= 1500 and n == n_tokens(first["choices"][0]["message"]["content"])
        assert first["choices"][0]["finish_reason"] == "stop"
        bounded = client.post(CHAT, json={**body, "max_tokens": 2000}).json()
        assert 24 <= bounded["usage"]["completion_tokens"] <= 120  # what the reference agent gets
        lengths.append(n)
    assert len(set(lengths)) > 4


def test_ledger_counts_calls_without_limits_and_the_largest_limit(client: TestClient) -> None:
    client.post(CHAT, json=chat_body())                                   # no limit
    client.post(CHAT, json=chat_body(max_tokens=300))
    client.post(CHAT, json=chat_body(max_completion_tokens=900))
    client.post(CHAT, json=chat_body(model="other", stream=True))         # no limit, streamed
    client.post("/faults", json={"error_rate": 1.0, "models": ["other"]})
    assert client.post(CHAT, json=chat_body(model="other", max_tokens=5000)).status_code == 500
    client.post(EMB, json={"model": "emb", "input": "x"})
    ledger = client.get("/ledger").json()
    assert ledger["calls_without_max_tokens"] == 2 and ledger["largest_max_tokens"] == 5000
    mini, other = ledger["models"]["gpt-4o-mini"], ledger["models"]["other"]
    assert (mini["calls_without_max_tokens"], mini["largest_max_tokens"]) == (1, 900)
    assert (other["calls_without_max_tokens"], other["largest_max_tokens"]) == (1, 5000)  # faulted calls count
    assert ledger["models"]["emb"]["largest_max_tokens"] is None
    assert client.post("/ledger/reset").json()["largest_max_tokens"] is None


def test_call_log_records_every_call_with_its_limit(client: TestClient) -> None:
    client.post(CHAT, json=chat_body(max_tokens=40), headers={"x-stainless-retry-count": "2"})
    client.post(CHAT, json=chat_body(max_completion_tokens=64, stream=True))
    client.post(CHAT, json=chat_body())
    client.post(CHAT, json={"model": "m", "messages": []})  # a 400: not a call
    client.post(EMB, json={"model": "emb", "input": ["a b", "c"]})
    log = client.get("/ledger/calls").json()
    calls = log["calls"]
    assert [c["seq"] for c in calls] == [1, 2, 3, 4] and log["last_seq"] == 4 and log["dropped"] == 0
    assert [(c["max_tokens_param"], c["max_tokens"]) for c in calls] == [
        ("max_tokens", 40), ("max_completion_tokens", 64), (None, None), (None, None)]
    assert [c["stream"] for c in calls] == [False, True, False, False]
    assert [c["retry_count"] for c in calls] == [2, None, None, None]
    assert [c["status"] for c in calls] == [200] * 4
    assert calls[0]["completion_tokens"] <= 40 and calls[3]["embedding_tokens"] == 3
    assert client.get("/ledger").json()["completion_tokens"] == sum(c["completion_tokens"] for c in calls)
    assert [c["seq"] for c in client.get("/ledger/calls", params={"since": 2}).json()["calls"]] == [3, 4]
    assert len(client.get("/ledger/calls", params={"since": 0, "limit": 1}).json()["calls"]) == 1
    assert client.get("/ledger/calls", params={"since": -1}).status_code == 422


def test_call_log_is_bounded_and_numbers_survive_a_reset() -> None:
    ledger = Ledger(call_log_size=3)
    for _ in range(5):
        ledger.open_call("chat", "m", limit=10)
    log = ledger.calls()
    assert [c["seq"] for c in log["calls"]] == [3, 4, 5] and log["dropped"] == 2
    assert ledger.calls(since=3)["dropped"] == 0
    ledger.reset()
    ledger.record_embeddings("e", 3, call=ledger.open_call("embeddings", "e"))
    assert [(c["seq"], c["status"]) for c in ledger.calls(since=5)["calls"]] == [(6, 200)]
    assert ledger.snapshot()["models"]["e"]["calls_without_max_tokens"] == 0  # embeddings have no limit


# --- embeddings: float and base64 are the same float32 vector ------------------------------


def test_base64_decodes_to_exactly_the_float_list(client: TestClient) -> None:
    body = {"model": "e", "input": ["password reset steps", "x"], "dimensions": 32}
    floats = client.post(EMB, json=body).json()["data"]
    packed = client.post(EMB, json={**body, "encoding_format": "base64"}).json()["data"]
    for f, b in zip(floats, packed, strict=True):
        # What the openai SDK does with its default (base64) request.
        assert array.array("f", base64.b64decode(b["embedding"])).tolist() == f["embedding"]


# --- fault knobs ---------------------------------------------------------------------------


def test_first_n_fails_exactly_the_first_requests_then_passes(client: TestClient) -> None:
    state = client.post("/faults", json={"first_n": 3, "status_code": 503, "retry_after_s": 2}).json()
    assert state["error_rate"] == 1.0 and state["active"] is True
    codes = [client.post(CHAT, json=chat_body(max_tokens=10)).status_code for _ in range(5)]
    assert codes == [503, 503, 503, 200, 200]
    state = client.get("/faults").json()
    assert (state["matched"], state["injected"], state["passed"]) == (5, 3, 2)
    assert state["spent"] is True and state["active"] is False


def test_first_n_with_a_rate_applies_the_rate_inside_the_window(client: TestClient) -> None:
    client.post("/faults", json={"first_n": 4, "error_rate": 0.5})
    codes = [client.post(EMB, json={"model": "e", "input": "x"}).status_code for _ in range(8)]
    assert codes == [200, 500, 200, 500, 200, 200, 200, 200]


def test_duration_s_expires_the_faults() -> None:
    now = [100.0]
    faults = FaultInjector(clock=lambda: now[0])
    faults.configure(FaultSettings(error_rate=1.0, duration_s=10, mode="hang", hang_s=60))
    decision = faults.decide("m", "chat")
    assert decision is not None and decision.fail and decision.hang_s == 10  # a hang ends with the window
    now[0] += 4
    assert faults.decide("m", "chat").hang_s == 6
    assert faults.describe()["expires_in_s"] == 6
    now[0] += 6
    assert faults.decide("m", "chat") is None
    state = faults.describe()
    assert state["expired"] is True and state["active"] is False and state["expires_in_s"] == 0
    assert (state["matched"], state["injected"]) == (3, 2)  # counters stay readable
    faults.clear()
    assert faults.describe()["expired"] is False and faults.describe()["expires_in_s"] is None


def test_429_and_503_carry_retry_after_and_the_openai_rate_limit_body(client: TestClient) -> None:
    client.post("/faults", json={"error_rate": 1.0, "status_code": 429, "retry_after_s": 0.25})
    r = client.post(CHAT, json=chat_body(model="gpt-4o"))
    assert r.status_code == 429
    assert (r.headers["retry-after"], r.headers["retry-after-ms"]) == ("1", "250")
    assert r.headers["x-request-id"].startswith("req_")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == ("requests", "rate_limit_exceeded", None)
    assert "Rate limit reached for gpt-4o" in error["message"] and "0.25s" in error["message"]
    client.post("/faults", json={"error_rate": 1.0, "status_code": 503, "retry_after_s": 3})
    r = client.post(EMB, json={"model": "e", "input": "x"})
    assert (r.status_code, r.headers["retry-after"], r.headers["retry-after-ms"]) == (503, "3", "3000")
    assert r.json()["error"]["type"] == "server_error"
    client.post("/faults", json={"error_rate": 1.0, "status_code": 429, "retry_after_s": None})
    assert "retry-after" not in client.post(CHAT, json=chat_body()).headers
    client.post("/faults", json={"error_rate": 1.0, "status_code": 500})
    assert "retry-after" not in client.post(CHAT, json=chat_body()).headers
    client.post("/faults", json={"error_rate": 1.0, "status_code": 403})
    assert client.post(CHAT, json=chat_body()).json()["error"]["type"] == "invalid_request_error"


def test_a_hang_answers_after_hang_s(client: TestClient) -> None:
    state = client.post("/faults", json={"mode": "timeout", "hang_s": 0.2}).json()
    assert (state["mode"], state["status_code"], state["error_rate"]) == ("hang", 504, 1.0)
    start = time.perf_counter()
    r = client.post(CHAT, json=chat_body())
    assert time.perf_counter() - start >= 0.19
    assert r.status_code == 504 and "held this chat request" in r.json()["error"]["message"]
    call = client.get("/ledger/calls").json()["calls"][-1]
    assert (call["status"], call["fault"]) == (504, "hang")
    assert client.get("/ledger").json()["errors"] == 1


def test_delete_faults_releases_a_hung_request() -> None:
    app = create_app(api_keys=[])

    async def main() -> tuple[int, float, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://stub", timeout=30) as ac:
            await ac.post("/faults", json={"mode": "hang", "hang_s": 60})
            hung = asyncio.ensure_future(ac.post(CHAT, json=chat_body()))
            deadline = time.monotonic() + 5
            while app.state.faults.describe()["hanging"] == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            held = app.state.faults.describe()["hanging"]
            start = time.monotonic()
            await ac.delete("/faults")
            response = await hung
            return response.status_code, time.monotonic() - start, held

    status, waited, held = asyncio.run(main())
    assert held == 1 and status == 504 and waited < 5


def test_fault_settings_defaults_follow_the_mode_and_window() -> None:
    assert FaultSettings().model_dump()["status_code"] == 500
    assert FaultSettings(first_n=2).error_rate == 1.0
    assert FaultSettings(first_n=2, error_rate=0.5).error_rate == 0.5
    hang = FaultSettings(mode="hang")
    assert (hang.error_rate, hang.status_code, hang.hang_s) == (1.0, 504, 120.0)
    assert FaultSettings(mode="hang", status_code=502).status_code == 502
    assert FaultSettings(status_code=503).active is False  # backwards compatible: no rate, no fault
    assert FaultSettings(first_token_ms=100).active is True


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"retry_after_s": 2}, "retry_after_s is sent only with status_code 429 or 503, not 500"),
        ({"hang_s": 5}, "hang_s applies only with mode: hang"),
        ({"mode": "sleep"}, "mode: Input should be 'error' or 'hang' (got 'sleep')"),
        ({"first_n": 0}, "first_n: Input should be greater than or equal to 1 (got 0)"),
        ({"duration_s": 0}, "duration_s: Input should be greater than 0 (got 0)"),
        ({"first_token_ms": -5}, "first_token_ms: Input should be greater than or equal to 0 (got -5)"),
        ({"error_rat": 0.5}, "error_rat: unknown key (known: error_rate, status_code, latency_ms"),
        (["error_rate"], "the body must be a JSON object of fault settings"),
    ],
)
def test_bad_fault_bodies_get_one_clear_422(client: TestClient, body: object, expected: str) -> None:
    r = client.post("/faults", json=body)
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert message.startswith("POST /faults: ") and expected in message and "\n" not in message
    assert client.get("/faults").json()["active"] is False


def test_fault_body_that_is_not_json_is_422_and_an_empty_one_clears(client: TestClient) -> None:
    r = client.post("/faults", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["message"] == "POST /faults: the body is not valid JSON"
    client.post("/faults", json={"error_rate": 1.0})
    assert client.post("/faults", content=b"").json()["active"] is False


def test_get_faults_reports_every_key_and_counter(client: TestClient) -> None:
    state = client.get("/faults").json()
    assert set(state) == {
        "error_rate", "status_code", "latency_ms", "models", "endpoints", "mode", "hang_s", "retry_after_s",
        "first_n", "duration_s", "first_token_ms", "active", "matched", "injected", "passed", "hanging",
        "spent", "expired", "expires_in_s",
    }


def test_unknown_v1_paths_get_an_openai_404(client: TestClient) -> None:
    r = client.post("/v1/responses", json={})
    assert r.status_code == 404
    assert r.json()["error"] == {"message": "Invalid URL (POST /v1/responses)", "type": "invalid_request_error",
                                 "param": None, "code": None}
    assert client.get("/nope").json() == {"detail": "Not Found"}
