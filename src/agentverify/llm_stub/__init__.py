"""An OpenAI-compatible LLM endpoint with exact token accounting and fault knobs.

The LLM stub stands in for a model provider when agentverify rehearses a deployment: it
answers ``POST /v1/chat/completions`` (JSON, or server-sent events with ``stream:
true``) and ``POST /v1/embeddings`` (``float`` or ``base64``) in OpenAI's shapes, so the
official ``openai`` SDK and any other OpenAI client work against it unchanged, and
everything it says is deterministic. A token is a match of ``\\w+|[^\\w\\s]``; a chat
request costs ``sum(tokens(content) + 4 for each message) + 2`` prompt tokens; the answer
depends only on the model, the messages and whether a token limit was sent (it quotes
the first context document — "According to <title>: <first sentence> ..." — and is
padded to ``24 + sha256(prompt) % 97`` tokens when ``max_tokens`` or
``max_completion_tokens`` is given, cut to that limit with ``finish_reason: "length"``,
and to a long ``400 + sha256(prompt) % 1101`` tokens when neither is, as a model on an
open-ended prompt would), and ``completion_tokens`` is exactly the token count of the
answer, streamed or not. Embeddings are L2-normalised feature-hashing vectors of words,
word pairs and character trigrams, as float32 values (``dimensions`` 2..4096, default
64), so texts that share words are near and base64 decodes to the very floats.

``GET /ledger`` reports the exact requests, errors and prompt, completion and embedding
tokens in total and per model, plus ``calls_without_max_tokens`` and
``largest_max_tokens`` (``POST /ledger/reset`` zeroes it); ``GET /ledger/calls?since=N``
lists recent calls one by one (endpoint, model, stream, the token limit and which
parameter set it, status, fault, tokens, the SDK's ``x-stainless-retry-count``). That
is what the cost gates compare an agent's own accounting against.

``POST /faults`` injects HTTP-level failures — errors at a deterministic rate (429 with
``Retry-After``, 5xx...), added latency, hangs the client times out on, a slow first
token of a stream, limited to the first N requests, to a duration, to some models and
endpoints — ``GET /faults`` shows them with ``matched`` / ``injected`` counters and
``DELETE /faults`` clears them; the body is described in
:mod:`agentverify.llm_stub.faults`. ``GET /health`` answers ``{"status": "ok"}`` and
``GET /metrics`` exposes ``llm_stub_requests_total{model,endpoint,status}`` and
``llm_stub_tokens_total{model,kind}``. With ``LLM_STUB_API_KEYS`` set (comma separated)
the ``/v1`` endpoints require ``Authorization: Bearer <key>``; a key is never logged or
echoed.

Example:
    Serve it (one worker: the ledger lives in memory) and call it::

        LLM_STUB_API_KEYS=sk-test python -m uvicorn agentverify.llm_stub.app:app \\
            --host 127.0.0.1 --port 8900

        curl -s 127.0.0.1:8900/v1/chat/completions -H 'Authorization: Bearer sk-test' \\
            -d '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}'
        curl -s -X POST 127.0.0.1:8900/faults -d '{"error_rate": 0.5, "status_code": 503}'
        curl -s -X POST 127.0.0.1:8900/faults -d '{"first_n": 3, "status_code": 429, "retry_after_s": 2}'
        curl -s 127.0.0.1:8900/ledger

    In process:

    >>> from agentverify.llm_stub import count_tokens, embed
    >>> count_tokens("How do I reset my password?")
    7
    >>> len(embed("password reset steps", 16))
    16
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentverify.llm_stub.answer import generate_answer
from agentverify.llm_stub.faults import FaultSettings
from agentverify.llm_stub.tokens import cosine, count_tokens, embed, prompt_tokens, stable_hash

if TYPE_CHECKING:
    from agentverify.llm_stub.app import create_app

__all__ = [
    "create_app",
    "count_tokens",
    "prompt_tokens",
    "stable_hash",
    "embed",
    "cosine",
    "generate_answer",
    "FaultSettings",
]


def __getattr__(name: str) -> Any:
    # app.py builds the module-level ``app`` (reading LLM_STUB_API_KEYS) on import;
    # callers that only count tokens should not pay for FastAPI or read the environment.
    if name == "create_app":
        from agentverify.llm_stub.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
