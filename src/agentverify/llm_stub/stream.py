"""Server-sent events of a streamed chat completion, as OpenAI sends them.

A ``stream: true`` chat is answered ``text/event-stream``: one ``data: <json>`` event
per ``chat.completion.chunk`` (events end with a blank line), all with the same ``id``,
``created`` and ``model``:

1. the role: ``choices[0].delta == {"role": "assistant", "content": "", "refusal": null}``;
2. one chunk per token of the answer, ``delta == {"content": "<token with the spaces
   before it>"}`` — the deltas joined are exactly the non-streamed ``message.content``;
3. ``delta == {}`` with the ``finish_reason`` (``stop`` or ``length``);
4. only with ``stream_options: {"include_usage": true}``: a chunk with ``choices: []``
   and the ``usage`` of the non-streamed call (every earlier chunk then has
   ``"usage": null``, as OpenAI sends it);
5. ``data: [DONE]``.

The ledger bills a stream in full when it starts, exactly as the same call unstreamed
(a client that leaves mid-stream is billed as if it had read to the end).

Example:
    >>> head, deltas, tail = chat_events("chatcmpl-1", 0, "m", "Hi there.", "stop",
    ...                                  {"prompt_tokens": 1, "completion_tokens": 3,
    ...                                   "total_tokens": 4}, include_usage=False)
    >>> split_deltas("Hi there.")
    ['Hi', ' there', '.']
    >>> import json
    >>> json.loads(deltas[1].removeprefix(b"data: "))["choices"]
    [{'index': 0, 'delta': {'content': ' there'}, 'logprobs': None, 'finish_reason': None}]
    >>> tail.endswith(b"data: [DONE]\\n\\n")
    True
"""

from __future__ import annotations

import json
from typing import Any

from agentverify.llm_stub.tokens import TOKEN_PATTERN

__all__ = ["split_deltas", "chat_events", "DONE"]

#: The event that ends every stream.
DONE = b"data: [DONE]\n\n"


def _dumps(value: Any) -> str:
    # OpenAI's events are compact JSON.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def split_deltas(text: str) -> list[str]:
    """Split an answer into one piece per token, each with the whitespace before it.

    ``"".join(split_deltas(text)) == text`` always (trailing whitespace, if any, stays on
    the last piece), and there are exactly ``count_tokens(text)`` pieces when the text
    has any token.

    Example:
        >>> split_deltas("Reset it, then log in.")
        ['Reset', ' it', ',', ' then', ' log', ' in', '.']
    """
    pieces: list[str] = []
    start = 0
    for match in TOKEN_PATTERN.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    if start < len(text):
        if pieces:
            pieces[-1] += text[start:]
        else:
            pieces.append(text[start:])
    return pieces


def chat_events(
    completion_id: str,
    created: int,
    model: str,
    content: str,
    finish_reason: str,
    usage: dict[str, int],
    *,
    include_usage: bool,
) -> tuple[bytes, list[bytes], bytes]:
    """Return the stream's events: (role event, one event per delta, the closing events).

    The caller sends the first part at once, may wait (a slow first token) before the
    deltas, and ends with the closing events (finish reason, usage if asked, ``[DONE]``).
    """
    usage_field = ',"usage":null' if include_usage else ""
    prefix = (f'data: {{"id":{_dumps(completion_id)},"object":"chat.completion.chunk",'
              f'"created":{created},"model":{_dumps(model)},"choices":[{{"index":0,"delta":')
    open_suffix = f',"logprobs":null,"finish_reason":null}}]{usage_field}}}\n\n'
    head = prefix + '{"role":"assistant","content":"","refusal":null}' + open_suffix
    deltas = [(prefix + '{"content":' + _dumps(piece) + "}" + open_suffix).encode()
              for piece in split_deltas(content)]
    tail = prefix + "{}" + f',"logprobs":null,"finish_reason":{_dumps(finish_reason)}}}]{usage_field}}}\n\n'
    if include_usage:
        tail += (f'data: {{"id":{_dumps(completion_id)},"object":"chat.completion.chunk",'
                 f'"created":{created},"model":{_dumps(model)},"choices":[],"usage":{_dumps(usage)}}}\n\n')
    return head.encode(), deltas, tail.encode() + DONE
