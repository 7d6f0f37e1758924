"""Calls to the OpenAI-compatible API: question embeddings and grounded answers.

The official SDK does the retries (``max_retries`` = ``model.retry_count``): it retries
connection errors, 408, 409, 429 and 5xx with exponential back-off and honours
``Retry-After``. What is still failing after that becomes one :class:`LLMError`.

Example:
    >>> build_messages("How do I reset?", [Passage("Reset", "Hold the button 10 s.", 0.9)])[0]["role"]
    'system'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import openai

from support_agent.config import Settings
from support_agent.knowledge import Passage
from support_agent.metrics import Metrics

__all__ = ["Answer", "LLM", "LLMError", "build_messages"]

SYSTEM_PROMPT = (
    "You are the customer-support assistant for Orbit mesh Wi-Fi. Answer the customer's "
    "question using only the numbered knowledge-base passages below. Be brief and concrete. "
    "If the passages do not answer it, say so and offer to open a support ticket."
)


class LLMError(Exception):
    """The API failed after the SDK's retries; the message is one line, without the key."""


@dataclass(frozen=True)
class Answer:
    """A completion: its text, the model that wrote it and the tokens it cost."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int


def build_messages(question: str, passages: Sequence[Passage]) -> list[dict[str, str]]:
    """The chat messages for one question: instructions + passages, then the question."""
    context = "\n\n".join(f"[{i}] {p.doc}\n{p.body}" for i, p in enumerate(passages, 1))
    return [
        {"role": "system", "content": f"{SYSTEM_PROMPT}\n\n{context or '(no passages found)'}"},
        {"role": "user", "content": question},
    ]


def _describe(exc: openai.OpenAIError, retries: int) -> str:
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = body.get("message") or exc.message
        return f"answered {exc.status_code} after {retries} retries: {str(detail).splitlines()[0][:200]}"
    if isinstance(exc, openai.APITimeoutError):
        return f"timed out after {retries} retries"
    if isinstance(exc, openai.APIConnectionError):
        return f"unreachable after {retries} retries"
    return f"failed: {type(exc).__name__}"


class LLM:
    """The agent's two API calls, with token usage counted into :class:`Metrics`.

    Args:
        settings: Resolved settings (base URL, key, ``model`` and ``vector_store`` sections).
        metrics: Where usage is counted.
        client: An ``AsyncOpenAI`` to use instead of building one (tests).

    Example:
        >>> from support_agent.config import load_settings
        >>> llm = LLM(load_settings({"OPENAI_API_KEY": "sk-x"}), Metrics())
        >>> llm.chat_model
        'gpt-4o-mini'
    """

    def __init__(self, settings: Settings, metrics: Metrics, client: Any = None) -> None:
        """Build the SDK client (no connection is made yet)."""
        self._model = settings.model
        self._vectors = settings.vector_store
        self._metrics = metrics
        self._where = settings.openai_base_url or "the OpenAI API"
        self._client = client or openai.AsyncOpenAI(
            base_url=settings.openai_base_url,
            api_key=settings.api_key.get_secret_value(),
            max_retries=settings.model.retry_count,
            timeout=settings.model.timeout,
        )

    @property
    def chat_model(self) -> str:
        """The configured chat model."""
        return self._model.model_name

    @property
    def embedding_model(self) -> str:
        """The configured embedding model."""
        return self._vectors.embedding_model

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector of ``vector_store.dim`` floats per text, in order.

        Raises:
            LLMError: The API failed, or answered vectors of another size.
        """
        try:
            response = await self._client.embeddings.create(
                model=self.embedding_model, input=list(texts), dimensions=self._vectors.dim
            )
        except openai.OpenAIError as exc:
            raise LLMError(f"embeddings at {self._where} {_describe(exc, self._model.retry_count)}") from exc
        if response.usage is not None:
            self._metrics.tokens(self.embedding_model, prompt=response.usage.prompt_tokens)
        vectors = [item.embedding for item in sorted(response.data, key=lambda item: item.index)]
        if len(vectors) != len(texts):
            raise LLMError(f"embeddings at {self._where}: {len(vectors)} vectors for {len(texts)} inputs")
        for vector in vectors:
            if len(vector) != self._vectors.dim:
                raise LLMError(
                    f"embeddings at {self._where}: model {self.embedding_model} answered {len(vector)} "
                    f"dimensions, vector_store.dim is {self._vectors.dim}"
                )
        return vectors

    async def answer(self, question: str, passages: Sequence[Passage]) -> Answer:
        """Ask the chat model to answer ``question`` from ``passages``.

        Raises:
            LLMError: The API failed after the SDK's retries.
        """
        try:
            response = await self._client.chat.completions.create(
                model=self.chat_model,
                messages=build_messages(question, passages),
                max_tokens=self._model.max_tokens,
                temperature=self._model.temperature,
            )
        except openai.OpenAIError as exc:
            raise LLMError(f"chat at {self._where} {_describe(exc, self._model.retry_count)}") from exc
        usage = response.usage
        prompt = usage.prompt_tokens if usage else 0
        completion = usage.completion_tokens if usage else 0
        # Counted under the requested name, which is what price lists use; the API may
        # answer with a dated variant (gpt-4o-mini -> gpt-4o-mini-2024-07-18).
        self._metrics.tokens(self.chat_model, prompt=prompt, completion=completion)
        text = (response.choices[0].message.content or "").strip() if response.choices else ""
        return Answer(text=text, model=response.model or self.chat_model,
                      prompt_tokens=prompt, completion_tokens=completion)

    async def close(self) -> None:
        """Close the SDK's HTTP connections."""
        await self._client.close()
