"""The official ``openai`` SDK against a real uvicorn process of the LLM stub.

One stub process per module on a free 127.0.0.1 port, with an API key, started and
stopped by process group; each test starts from an empty ledger and no faults. The SDK
is used exactly as an agent would use it (``base_url``, ``api_key``, ``max_retries``,
``timeout``); ledger, call log and fault counters are read over HTTP from the stub.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from agentverify.stack.local import free_port
from agentverify.stack.runstate import terminate_group

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
API_KEY = "sk-stub-sdk-" + uuid.uuid4().hex[:8]
START_TIMEOUT = 30.0
MESSAGES = [
    {"role": "system", "content": "Answer from the context.\nContext:\n# Password reset\n"
     "Open Settings and choose Reset password. A link is mailed to you."},
    {"role": "user", "content": "How do I reset my password?"},
]


@dataclass
class Stub:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    clients: list[openai.OpenAI] = field(default_factory=list)

    def client(self, **options: Any) -> openai.OpenAI:
        """An SDK client on the stub; ``max_retries`` 0 unless a test asks for retries."""
        options.setdefault("api_key", API_KEY)
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", 10.0)
        client = openai.OpenAI(base_url=self.url + "/v1", **options)
        self.clients.append(client)  # closed after the test: no socket is left open
        return client

    def get(self, path: str, **params: Any) -> Any:
        return httpx.get(self.url + path, params=params, timeout=5).json()

    def faults(self, **body: Any) -> dict[str, Any]:
        response = httpx.post(self.url + "/faults", json=body, timeout=5)
        assert response.status_code == 200, response.text
        return response.json()

    def calls(self) -> list[dict[str, Any]]:
        return self.get("/ledger/calls")["calls"]


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stub]:
    log = tmp_path_factory.mktemp("llm-stub") / "stub.log"
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "LLM_STUB_API_KEYS": API_KEY, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "agentverify.llm_stub.app:app", "--host", "127.0.0.1",
             "--port", str(port), "--no-access-log"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the LLM stub did not answer /health on {url} (exit code {proc.poll()}); "
                            f"its log:\n{log.read_text(errors='replace')[-2000:]}", pytrace=False)
            time.sleep(0.05)
        yield Stub(url, proc, log)
    finally:
        terminate_group(proc, grace=5)
    assert API_KEY not in log.read_text(errors="replace")  # the key never reaches the log


@pytest.fixture(autouse=True)
def clean(stub: Stub) -> Iterator[None]:
    """Each test starts from an empty ledger and no faults, and leaves none behind."""
    httpx.delete(stub.url + "/faults", timeout=5)
    httpx.post(stub.url + "/ledger/reset", timeout=5)
    try:
        yield
    finally:
        while stub.clients:
            stub.clients.pop().close()
        httpx.delete(stub.url + "/faults", timeout=5)


def ledger_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    keys = ("requests", "errors", "chat_requests", "prompt_tokens", "completion_tokens", "embedding_tokens")
    return {k: after[k] - before[k] for k in keys}


# --- chat and streaming ------------------------------------------------------------------


def test_chat_usage_is_what_the_ledger_billed(stub: Stub) -> None:
    before = stub.get("/ledger")
    reply = stub.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=300)
    delta = ledger_delta(before, stub.get("/ledger"))
    assert reply.choices[0].message.content.startswith("According to Password reset: Open Settings")
    assert reply.choices[0].finish_reason == "stop"
    assert delta["prompt_tokens"] == reply.usage.prompt_tokens > 0
    assert delta["completion_tokens"] == reply.usage.completion_tokens > 0
    assert (delta["requests"], delta["errors"]) == (1, 0)


@pytest.mark.parametrize("include_usage", [True, False], ids=["include_usage", "no_usage"])
def test_streaming_bills_exactly_the_unstreamed_usage(stub: Stub, include_usage: bool) -> None:
    client = stub.client()
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=300)
    before = stub.get("/ledger")
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=300,
                                                 stream=True, **options))
    delta = ledger_delta(before, stub.get("/ledger"))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    if include_usage:
        usage_chunk = chunks[-1]
        assert usage_chunk.choices == [] and all(c.usage is None for c in chunks[:-1])
        assert usage_chunk.usage.prompt_tokens == delta["prompt_tokens"] == plain.usage.prompt_tokens
        assert usage_chunk.usage.completion_tokens == delta["completion_tokens"] \
            == plain.usage.completion_tokens
    else:
        assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
        assert delta["prompt_tokens"] == plain.usage.prompt_tokens
        assert delta["completion_tokens"] == plain.usage.completion_tokens
    assert delta["chat_requests"] == 1
    assert stub.calls()[-1]["stream"] is True


def test_first_token_delay_holds_the_first_content_not_the_headers(stub: Stub) -> None:
    stub.faults(first_token_ms=700, endpoints=["chat"])
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 50, "stream": True}
    start = time.monotonic()
    with httpx.stream("POST", stub.url + "/v1/chat/completions", json=body, timeout=10,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as response:
        headers_after = time.monotonic() - start
        assert response.status_code == 200
        first_content_after = None
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"role"' not in line:
                first_content_after = time.monotonic() - start
                break
    assert headers_after < 0.35, f"headers took {headers_after:.3f}s"
    assert first_content_after is not None and first_content_after >= 0.69
    # The SDK sees the same: its first content delta comes after the delay.
    start = time.monotonic()
    for chunk in stub.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50,
                                                       stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            break
    assert time.monotonic() - start >= 0.69


# --- embeddings ----------------------------------------------------------------------------


def test_default_sdk_embeddings_are_base64_and_decode_to_the_float_vectors(stub: Stub) -> None:
    client = stub.client()
    inputs = ["password reset steps", "How do I reset my password?"]
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=inputs, dimensions=64)
    assert json.loads(raw.http_request.content)["encoding_format"] == "base64"  # the SDK's default
    assert all(isinstance(d["embedding"], str) for d in raw.http_response.json()["data"])
    default = raw.parse()
    floats = client.embeddings.create(model="text-embedding-3-small", input=inputs, dimensions=64,
                                      encoding_format="float")
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert len(default.data[0].embedding) == 64
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens == 3 + 7
    assert stub.get("/ledger")["embedding_tokens"] == 20


# --- errors, retries, timeouts -------------------------------------------------------------


def test_a_429_is_a_rate_limit_error_with_retry_after(stub: Stub) -> None:
    stub.faults(error_rate=1.0, status_code=429, retry_after_s=0.25)
    with pytest.raises(openai.RateLimitError) as caught:
        stub.client().chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=10)
    err = caught.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded" and err.type == "requests"
    assert err.param is None and "Rate limit reached for gpt-4o" in err.message
    assert err.response.headers["retry-after"] == "1" and err.response.headers["retry-after-ms"] == "250"
    assert err.request_id and err.request_id.startswith("req_")


def test_sdk_retries_recover_from_a_429_burst(stub: Stub) -> None:
    stub.faults(first_n=2, status_code=429, retry_after_s=0.25)
    start = time.monotonic()
    reply = stub.client(max_retries=3).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=10)
    elapsed = time.monotonic() - start
    assert reply.usage.completion_tokens == 10
    state = stub.get("/faults")
    assert (state["matched"], state["injected"], state["passed"], state["spent"]) == (3, 2, 1, True)
    calls = stub.calls()
    assert [(c["retry_count"], c["status"]) for c in calls] == [(0, 429), (1, 429), (2, 200)]
    ledger = stub.get("/ledger")["models"]["gpt-4o"]
    assert (ledger["errors"], ledger["chat_requests"]) == (2, 1)
    # Two waits of retry-after-ms (0.25 s); without it the SDK's own backoff is >= 1.125 s.
    assert 0.5 <= elapsed < 1.1, f"{elapsed:.3f}s"


def test_sdk_gives_up_when_the_burst_outlasts_max_retries(stub: Stub) -> None:
    stub.faults(first_n=5, status_code=503, retry_after_s=0.05)
    with pytest.raises(openai.InternalServerError) as caught:
        stub.client(max_retries=2).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=10)
    assert caught.value.status_code == 503
    assert stub.get("/faults")["injected"] == 3  # 1 attempt + 2 retries
    assert stub.get("/ledger")["requests"] == 0


def test_a_500_is_retried_with_the_sdk_backoff(stub: Stub) -> None:
    stub.faults(first_n=1, status_code=500)
    start = time.monotonic()
    reply = stub.client(max_retries=2).embeddings.create(model="emb", input="hello world")
    elapsed = time.monotonic() - start
    assert len(reply.data[0].embedding) == 64
    assert [(c["retry_count"], c["status"]) for c in stub.calls()] == [(0, 500), (1, 200)]
    assert elapsed >= 0.35, f"{elapsed:.3f}s"  # no Retry-After on a 500: 0.5 s minus up to 25% jitter


def test_bad_request_is_a_bad_request_error_naming_the_param(stub: Stub) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stub.client().chat.completions.create(model="m", messages=[{"role": "wizard", "content": "x"}])
    assert caught.value.param == "messages[0].role" and caught.value.type == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        stub.client(api_key="sk-wrong").models.list()


def test_a_hang_makes_the_sdk_time_out_and_every_attempt_is_seen(stub: Stub) -> None:
    stub.faults(mode="hang", hang_s=30)
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        stub.client(max_retries=1, timeout=0.5).chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                                                        max_tokens=10)
    elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 5.0, f"{elapsed:.3f}s"  # two 0.5 s timeouts plus one backoff, not the 30 s hang
    deadline = time.monotonic() + 5
    while stub.get("/faults")["hanging"] and time.monotonic() < deadline:
        time.sleep(0.05)
    state = stub.get("/faults")
    assert (state["hanging"], state["matched"], state["injected"]) == (0, 2, 2)
    assert [(c["status"], c["fault"]) for c in stub.calls()] == [(499, "hang"), (499, "hang")]
    assert stub.get("/ledger")["errors"] == 2


def test_a_hang_shorter_than_the_client_timeout_ends_in_a_504(stub: Stub) -> None:
    stub.faults(mode="hang", hang_s=0.3)
    start = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        stub.client(timeout=5).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=10)
    assert time.monotonic() - start >= 0.29
    assert caught.value.status_code == 504 and "held this chat request" in caught.value.message


# --- fault windows -------------------------------------------------------------------------


def test_first_n_fails_exactly_the_first_requests(stub: Stub) -> None:
    stub.faults(first_n=3, status_code=500)
    client = stub.client()
    outcomes = []
    for _ in range(5):
        try:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
            outcomes.append("ok")
        except openai.InternalServerError:
            outcomes.append("500")
    assert outcomes == ["500", "500", "500", "ok", "ok"]
    state = stub.get("/faults")
    assert (state["matched"], state["injected"], state["active"]) == (5, 3, False)


def test_duration_s_clears_the_faults_by_itself(stub: Stub) -> None:
    state = stub.faults(error_rate=1.0, status_code=503, retry_after_s=0, duration_s=1.0)
    assert state["active"] is True and 0 < state["expires_in_s"] <= 1.0
    client = stub.client()
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
    deadline = time.monotonic() + 5
    while not stub.get("/faults")["expired"] and time.monotonic() < deadline:
        time.sleep(0.05)
    reply = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
    assert reply.usage.completion_tokens == 5
    state = stub.get("/faults")
    assert (state["expired"], state["active"], state["matched"], state["injected"]) == (True, False, 2, 1)


# --- completion bounds ---------------------------------------------------------------------


def test_max_tokens_is_recorded_and_its_absence_costs_a_long_answer(stub: Stub) -> None:
    client = stub.client()
    bounded = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2000)
    newer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_completion_tokens=64)
    open_ended = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    again = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert 24 <= bounded.usage.completion_tokens <= 120
    assert newer.usage.completion_tokens <= 64
    assert 400 <= open_ended.usage.completion_tokens <= 1500
    assert open_ended.usage.completion_tokens > 3 * bounded.usage.completion_tokens
    assert again.choices[0].message.content == open_ended.choices[0].message.content  # deterministic
    model = stub.get("/ledger")["models"]["gpt-4o"]
    assert (model["calls_without_max_tokens"], model["largest_max_tokens"]) == (2, 2000)
    assert [(c["max_tokens_param"], c["max_tokens"]) for c in stub.calls()] == [
        ("max_tokens", 2000), ("max_completion_tokens", 64), (None, None), (None, None)]
