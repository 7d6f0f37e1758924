"""Deterministic chat answers: same (model, messages, bounded or not) in, same answer out.

The answer quotes the context the caller put in the prompt, so a test can see that
retrieval reached the model, and then pads to a length chosen by a stable hash. Like a
real model on an open-ended prompt, a request with no token limit rambles:

    h = stable_hash(prompt_key(model, messages))
    target = 24 + h % 97        with max_tokens / max_completion_tokens   # 24..120 tokens
    target = 400 + h % 1101     without any limit                         # 400..1500 tokens

so an agent that drops ``max_tokens`` visibly costs more. ``prompt_key`` is the compact
JSON of ``[model, [[role, content], ...]]``. The answer is

* ``According to <title>: <first sentence of the context> ...`` when the system
  messages (or a ``Context:`` block before a ``Question:`` line in the last user
  message) hold context; the title is the first line that looks like a heading
  (``# Title``, ``Title: ...``, ``[1] ...``, ``Document: ...``, ``Source: ...``);
* ``Regarding <the question>: ...`` otherwise;

followed by filler sentences of words picked by SHA-256 until it has exactly ``target``
tokens (see :mod:`agentverify.llm_stub.tokens`). With a token limit below the target the
answer is cut to exactly ``limit`` tokens and the finish reason is ``"length"``.

Example:
    >>> msgs = [{"role": "system", "content": "# Passwords\\nOpen Settings to reset it."},
    ...         {"role": "user", "content": "How do I reset my password?"}]
    >>> text, reason = generate_answer("gpt-4o-mini", msgs, max_tokens=500)
    >>> text.startswith("According to Passwords: Open Settings to reset it."), reason
    (True, 'stop')
    >>> generate_answer("gpt-4o-mini", msgs, max_tokens=5)
    ('According to Passwords: Open', 'length')
    >>> from agentverify.llm_stub.tokens import count_tokens
    >>> count_tokens(generate_answer("gpt-4o-mini", msgs)[0]) >= 400
    True
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from functools import lru_cache

from agentverify.llm_stub.tokens import count_tokens, cut_tokens, stable_hash

__all__ = [
    "prompt_key",
    "target_tokens",
    "generate_answer",
    "MIN_ANSWER_TOKENS",
    "ANSWER_SPREAD",
    "MIN_LONG_ANSWER_TOKENS",
    "LONG_ANSWER_SPREAD",
]

#: Shortest untruncated answer to a request with a token limit, in tokens.
MIN_ANSWER_TOKENS = 24
#: Such answers spread over ``MIN_ANSWER_TOKENS + range(ANSWER_SPREAD)``.
ANSWER_SPREAD = 97
#: Shortest answer to a request without any token limit.
MIN_LONG_ANSWER_TOKENS = 400
#: Those spread over ``MIN_LONG_ANSWER_TOKENS + range(LONG_ANSWER_SPREAD)`` (up to 1,500).
LONG_ANSWER_SPREAD = 1101

_CONTEXT_ROLES = frozenset({"system", "developer"})
_TITLE = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]+|(?:title|document|doc|source)[ \t]*\d*[ \t]*:[ \t]*|\[\d+\][ \t]*)"
    r"(\S.*?)[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
_LABEL = re.compile(r"^[ \t]*(?:context|documents?|sources?)[ \t]*:", re.IGNORECASE | re.MULTILINE)
_QUESTION_SPLIT = re.compile(r"^[ \t]*(?:question|q)[ \t]*:[ \t]*", re.IGNORECASE | re.MULTILINE)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_SPACES = re.compile(r"\s+")

_MAX_TITLE_TOKENS = 12
_MAX_SENTENCE_TOKENS = 40
_MAX_QUESTION_TOKENS = 20

# Filler vocabulary: plain words only, so every word is exactly one token.
_FILLER = (
    "the service keeps answers short and consistent so operators can verify each "
    "response against its source while load tests measure latency tokens errors and "
    "throughput across replicas during deploys rollbacks restores and failover drills "
    "every step is recorded in the ledger which makes usage exact repeatable auditable "
    "for budgets alerts dashboards reports gates checks runs stacks caches vectors "
    "documents queries models prompts"
).split()


def prompt_key(model: str, messages: Sequence[tuple[str, str]]) -> str:
    """Return the canonical text hashed to pick the answer length and filler words.

    Example:
        >>> prompt_key("m", [("user", "hi")])
        '["m",[["user","hi"]]]'
    """
    return json.dumps([model, [list(m) for m in messages]], ensure_ascii=False, separators=(",", ":"))


def target_tokens(key: str, bounded: bool = True) -> int:
    """Return the untruncated answer length for a prompt key.

    ``24 + stable_hash % 97`` for a request with a token limit (``bounded``), else
    ``400 + stable_hash % 1101``.

    Example:
        >>> 24 <= target_tokens("k") <= 120 and 400 <= target_tokens("k", bounded=False) <= 1500
        True
    """
    if bounded:
        return MIN_ANSWER_TOKENS + stable_hash(key) % ANSWER_SPREAD
    return MIN_LONG_ANSWER_TOKENS + stable_hash(key) % LONG_ANSWER_SPREAD


def _one_line(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _split_context(messages: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """Return (context, question) taken from the messages."""
    context = "\n".join(content for role, content in messages if role in _CONTEXT_ROLES)
    question = ""
    for role, content in reversed(messages):
        if role == "user":
            question = content
            break
    if not question and messages:
        question = messages[-1][1]
    # Agents often inline retrieved documents: "Context: ... Question: ...".
    parts = _QUESTION_SPLIT.split(question, maxsplit=1)
    if len(parts) == 2:
        context = (context + "\n" + parts[0]).strip()
        question = parts[1]
    return context, question


def _title_and_body(context: str) -> tuple[str, str]:
    """Return (title, text after the title) of the first document in the context."""
    label = _LABEL.search(context)
    if label is not None:
        # Instructions usually precede the documents; quote the documents.
        context = context[label.end() :]
    match = _TITLE.search(context)
    if match is None:
        return "", context
    return match.group(1), context[match.end() :]


def _first_sentence(text: str) -> str:
    text = _one_line(text)
    match = _SENTENCE_END.search(text)
    return text[: match.end()] if match else text


def _filler(key: str, n: int) -> str:
    """Return text of exactly ``n`` tokens: sentences of 6..13 words, each ending in "."."""
    words: list[str] = []
    produced = 0
    sentence_left = -1  # words still to write in this sentence; -1: start a new one
    block = 0
    while produced < n:
        for byte in hashlib.sha256(f"{block}:{key}".encode()).digest():
            if produced == n:
                break
            left = n - produced
            if words and (left == 1 or (sentence_left == 0 and left != 2)):
                # The full stop sticks to the previous word but is a token of its own.
                words[-1] += "."
                produced += 1
                sentence_left = -1
                continue
            word = _FILLER[byte % len(_FILLER)]
            if sentence_left == 0:
                # Two tokens left at a sentence end: one more word, then the last stop.
                sentence_left = 1
            elif sentence_left < 0:
                sentence_left = 6 + byte % 8
                word = word.capitalize()
            words.append(word)
            produced += 1
            sentence_left -= 1
        block += 1
    return " ".join(words)


@lru_cache(maxsize=4096)
def _full_answer(model: str, messages: tuple[tuple[str, str], ...], bounded: bool) -> tuple[str, int]:
    key = prompt_key(model, messages)
    target = target_tokens(key, bounded)
    context, question = _split_context(messages)
    title, body = _title_and_body(context)
    sentence = cut_tokens(_first_sentence(body), _MAX_SENTENCE_TOKENS)
    if sentence:
        title = cut_tokens(_one_line(title), _MAX_TITLE_TOKENS) or "the provided context"
        head = f"According to {title}: {sentence}"
    else:
        asked = cut_tokens(_one_line(question), _MAX_QUESTION_TOKENS) or "your request"
        head = f"Regarding {asked}:"
    have = count_tokens(head)
    if have >= target:
        text = cut_tokens(head, target)
    else:
        text = head + " " + _filler(key, target - have)
    return text, count_tokens(text)


def generate_answer(
    model: str,
    messages: Sequence[tuple[str, str]] | Sequence[dict[str, str]],
    max_tokens: int | None = None,
) -> tuple[str, str]:
    """Return ``(content, finish_reason)`` for a chat request.

    Args:
        model: The requested model name (part of the hash, so models answer differently).
        messages: ``(role, content)`` pairs or ``{"role", "content"}`` mappings.
        max_tokens: Token limit of the completion; ``None`` means no limit (and a long
            answer, see the module docstring).

    Returns:
        The answer, with exactly ``min(target, max_tokens)`` tokens, and ``"length"`` if
        it was cut by the limit, else ``"stop"``.
    """
    pairs = tuple(
        (m["role"], m["content"]) if isinstance(m, dict) else (m[0], m[1]) for m in messages
    )
    text, n = _full_answer(model, pairs, max_tokens is not None)
    if max_tokens is not None and max_tokens < n:
        return cut_tokens(text, max_tokens), "length"
    return text, "stop"
