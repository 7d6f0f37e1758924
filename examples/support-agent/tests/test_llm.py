"""The LLM calls: SDK arguments, usage into metrics, errors as one line (fake SDK client)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace as NS
from typing import Any

import openai
import pytest

from support_agent.config import load_settings
from support_agent.knowledge import Passage
from support_agent.llm import LLM, LLMError, build_messages
from support_agent.metrics import Metrics


class FakeSDK:
    """Records the keyword arguments of each call and answers like the SDK would."""

    def __init__(self, dim: int = 8, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.dim = dim
        self.error = error
        self.embeddings = NS(create=self._embed)
        self.chat = NS(completions=NS(create=self._chat))

    async def _embed(self, **kwargs: Any) -> Any:
        self.calls.append(("embeddings", kwargs))
        if self.error:
            raise self.error
        data = [NS(index=i, embedding=[0.5] * self.dim) for i in reversed(range(len(kwargs["input"])))]
        return NS(data=data, usage=NS(prompt_tokens=7, total_tokens=7))

    async def _chat(self, **kwargs: Any) -> Any:
        self.calls.append(("chat", kwargs))
        if self.error:
            raise self.error
        return NS(model="gpt-4o-mini-2024-07-18", choices=[NS(message=NS(content=" Two years. "))],
                  usage=NS(prompt_tokens=120, completion_tokens=9))

    async def close(self) -> None:
        pass


def make(tmp_path: Any, sdk: FakeSDK) -> tuple[LLM, Metrics]:
    config = tmp_path / "c.yaml"
    config.write_text("model: {model_name: m-chat, max_tokens: 77, temperature: 0.1}\n"
                      "vector_store: {dim: 8, embedding_model: m-embed}\n")
    metrics = Metrics()
    return LLM(load_settings({"OPENAI_API_KEY": "sk-x", "SUPPORT_CONFIG": str(config)}), metrics, sdk), metrics


def sample(metrics: Metrics, model: str, direction: str) -> float | None:
    return metrics.registry.get_sample_value("support_agent_llm_tokens_total",
                                             {"model": model, "direction": direction})


def test_embed_sends_dimensions_and_counts_usage(tmp_path: Any) -> None:
    sdk = FakeSDK()
    llm, metrics = make(tmp_path, sdk)
    vectors = asyncio.run(llm.embed(["a", "b"]))
    assert vectors == [[0.5] * 8, [0.5] * 8]
    assert sdk.calls == [("embeddings", {"model": "m-embed", "input": ["a", "b"], "dimensions": 8})]
    assert sample(metrics, "m-embed", "prompt") == 7


def test_embed_of_the_wrong_size_is_refused(tmp_path: Any) -> None:
    llm, _ = make(tmp_path, FakeSDK(dim=3))
    with pytest.raises(LLMError, match="answered 3 dimensions, vector_store.dim is 8"):
        asyncio.run(llm.embed(["a"]))


def test_answer_sends_max_tokens_and_counts_usage_under_the_requested_model(tmp_path: Any) -> None:
    sdk = FakeSDK()
    llm, metrics = make(tmp_path, sdk)
    reply = asyncio.run(llm.answer("How long?", [Passage("Warranty", "2 years", 0.9)]))
    assert (reply.text, reply.model, reply.prompt_tokens, reply.completion_tokens) == (
        "Two years.", "gpt-4o-mini-2024-07-18", 120, 9)
    kind, kwargs = sdk.calls[0]
    assert kind == "chat" and (kwargs["model"], kwargs["max_tokens"], kwargs["temperature"]) == ("m-chat", 77, 0.1)
    assert kwargs["messages"][1] == {"role": "user", "content": "How long?"}
    assert "[1] Warranty\n2 years" in kwargs["messages"][0]["content"]
    assert (sample(metrics, "m-chat", "prompt"), sample(metrics, "m-chat", "completion")) == (120, 9)


@pytest.mark.parametrize(("error", "expected"), [
    (openai.RateLimitError("Error code: 429", response=NS(status_code=429, headers={}, request=None),
                           body={"message": "Injected fault: slow down\nsecond line"}),
     "answered 429 after 3 retries: Injected fault: slow down"),
    (openai.APIConnectionError(request=None), "unreachable after 3 retries"),  # type: ignore[arg-type]
    (openai.APITimeoutError(request=None), "timed out after 3 retries"),  # type: ignore[arg-type]
])
def test_sdk_errors_become_one_line(tmp_path: Any, error: Exception, expected: str) -> None:
    llm, _ = make(tmp_path, FakeSDK(error=error))
    with pytest.raises(LLMError) as info:
        asyncio.run(llm.answer("q", []))
    assert str(info.value).startswith("chat at the OpenAI API ") and expected in str(info.value)
    assert "\n" not in str(info.value)


def test_the_sdk_is_built_with_the_retry_count_and_timeout() -> None:
    settings = load_settings({"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    llm = LLM(settings, Metrics())
    client = llm._client
    assert (client.max_retries, client.timeout, str(client.base_url)) == (3, 30.0, "http://127.0.0.1:9/v1/")
    asyncio.run(llm.close())


def test_messages_without_passages_say_so() -> None:
    assert "(no passages found)" in build_messages("q", [])[0]["content"]
