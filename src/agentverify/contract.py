"""How agentverify talks to the agent under test: ``stack.agent.contract``.

Every step that sends the agent a request or reads its reply goes through one
:class:`AgentContract` — the probe, the smoke steps, deploy's verification, the Locust
users (the contract travels in their plan as JSON), the cost controls, backup and
restore's known answers and the agent operations of :mod:`agentverify.agent_ops` — so
the reference agent is one agent among others. Every key defaults to the reference
agent's contract; an agent describes only what differs::

    stack:
      agent:
        contract:
          chat: {method: POST, path: /v1/ask,
                 body: {question: "{message}", conversation_id: "{session}"}}
          reply: {answer: text, sources: citations, source_title: doc,
                  version: "header:X-App-Version", replica: "header:X-Served-By",
                  cached: meta.cached, completion_tokens: null}
          health_path: /healthz
          client_id_header: X-Customer-Id
          admin: null                      # no admin endpoints: agent_ops falls back

**Reply paths** (``reply.*``) are a small syntax, checked when the config is loaded:

===================  ======================================================================
``header:NAME``      the response header NAME (case-insensitive)
``a.b.c``            key ``c`` of the object at key ``b`` of the object at key ``a``
``items.0.title``    a segment of digits indexes a list (``-1``: the last item)
``$``                the whole JSON body
``null``             the agent's reply does not carry it: checks use the LLM ledger where
                     they can, and report *inconclusive* where they cannot
===================  ======================================================================

``sources`` points at a list; ``source_title`` is a path inside each item (``$`` or
null: the item itself is the title). Keys that contain a dot cannot be addressed.

**Request templates**: in ``chat.body`` (and ``chat.headers``) a string that is exactly
``"{message}"`` or ``"{session}"`` becomes the question / the conversation id (``null``
when there is none); inside a longer string they are substituted as text. ``{{`` and
``}}`` are literal braces. With ``method: GET`` the body becomes the query string.

A reply that does not match the contract is a :class:`~agentverify.errors.ContractError`:
one line naming the contract key, what was wrong, the request and the reply (quoted,
truncated).

Only pydantic is imported here at module level: the Locust child imports this module.

Example:
    >>> contract = AgentContract.default()
    >>> contract.request("How do I reset?").json
    {'message': 'How do I reset?', 'session_id': None}
    >>> reply = contract.parse(200, {"X-Agent-Version": "v2"},
    ...                        '{"answer": "Hold 10 s.", "sources": [{"title": "Reset"}]}')
    >>> reply.answer, reply.sources, reply.version
    ('Hold 10 s.', ('Reset',), 'v2')
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

from pydantic import Field, field_validator

from agentverify.errors import ContractError
from agentverify.seed import Section

if TYPE_CHECKING:
    import httpx

__all__ = [
    "AGENTVERIFY_KEY_PREFIX",
    "AdminSection",
    "AgentContract",
    "AgentReply",
    "ChatRequest",
    "ChatSection",
    "ContractSection",
    "LogsSection",
    "ReplyPath",
    "ReplySection",
    "render_template",
]

#: how much of a reply a message quotes
QUOTE_CHARS = 300
#: the Redis namespace of the keys agentverify writes itself (a backup rehearsal's seeded
#: data): never the agent's, so no ``cache_keys`` pattern may name it
AGENTVERIFY_KEY_PREFIX = "agentverify:"
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_TEMPLATE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TEMPLATE_NAMES = ("message", "session")


# ----------------------------------------------------------------------------- reply paths


class _Missing(Exception):
    """A reply path did not resolve; the message says where it stopped."""


@dataclass(frozen=True)
class ReplyPath:
    """A compiled reply path (see the module docstring for the syntax).

    Example:
        >>> ReplyPath.parse("meta.cached").get({}, {"meta": {"cached": True}})
        True
        >>> ReplyPath.parse("header:X-Served-By").get({"x-served-by": "agent-1"}, None)
        'agent-1'
    """

    text: str
    header: str | None = None
    keys: tuple[str | int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> ReplyPath:
        """Compile ``text``.

        Raises:
            ValueError: not a valid path (the message says why).
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("expected a reply path such as 'answer', 'meta.cached' or "
                             "'header:X-Agent-Version'")
        text = text.strip()
        if text.lower().startswith("header:"):
            name = text[len("header:"):].strip()
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{text!r}: expected header:NAME with an HTTP header name")
            return cls(text, header=name.lower())
        if text == "$":
            return cls(text)
        keys: list[str | int] = []
        for part in text.split("."):
            if not part:
                raise ValueError(f"{text!r}: empty segment (write keys separated by single dots)")
            keys.append(int(part) if re.fullmatch(r"-?\d+", part) else part)
        return cls(text, keys=tuple(keys))

    def get(self, headers: Mapping[str, str], body: Any) -> Any:
        """The value at this path of a reply (``headers`` keys in lower case).

        Raises:
            _Missing: the path does not resolve; the message says where it stopped.
        """
        if self.header is not None:
            if self.header not in headers:
                raise _Missing(f"no header {self.header!r}")
            return headers[self.header]
        node = body
        walked: list[str] = []
        for key in self.keys:
            where = ".".join(walked) or "the body"
            if isinstance(key, int):
                if not isinstance(node, list):
                    raise _Missing(f"{where} is {_kind(node)}, not a list")
                if not -len(node) <= key < len(node):
                    raise _Missing(f"{where} has {len(node)} item(s), no item {key}")
                node = node[key]
            else:
                if not isinstance(node, dict):
                    raise _Missing(f"{where} is {_kind(node)}, not an object")
                if key not in node:
                    shown = ", ".join(sorted(map(str, node))[:8]) or "none"
                    raise _Missing(f"no key {key!r} in {where} (keys: {shown})")
                node = node[key]
            walked.append(str(key))
        return node

    def __str__(self) -> str:
        return self.text


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}")


def _check_path(value: str | None) -> str | None:
    if value is None:
        return None
    ReplyPath.parse(value)
    return value.strip()


# ------------------------------------------------------------------------ config sections


class ChatSection(Section):
    """The chat request: method, path, JSON body template and extra headers."""

    method: Literal["POST", "PUT", "PATCH", "GET"] = "POST"
    path: str = Field("/chat", pattern=r"^/")
    body: dict[str, Any] = Field(
        default_factory=lambda: {"message": "{message}", "session_id": "{session}"})
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("body")
    @classmethod
    def _body(cls, value: dict[str, Any]) -> dict[str, Any]:
        _known_templates(value)
        if "message" not in _template_names(value):
            raise ValueError("the body template must hold the question: put \"{message}\" "
                             "in it, e.g. {question: \"{message}\"}")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        _known_templates(value)
        return value


class ReplySection(Section):
    """Where things are in the chat reply (reply paths; null: not in the reply)."""

    answer: str = "answer"
    sources: str | None = "sources"
    source_title: str | None = "title"
    version: str | None = "header:X-Agent-Version"
    replica: str | None = "header:X-Agent-Replica"
    cached: str | None = "cached"
    completion_tokens: str | None = "usage.completion_tokens"
    error: str | None = "error"

    @field_validator("answer", "sources", "source_title", "version", "replica", "cached",
                     "completion_tokens", "error")
    @classmethod
    def _reply_path(cls, value: str | None) -> str | None:
        return _check_path(value)


class AdminSection(Section):
    """Admin endpoints speaking the reference agent's admin API (``POST`` with the
    bodies :mod:`agentverify.agent_ops` documents; ``GET`` on the same path reads the
    state back). Null: the agent has none, and agent_ops falls back to what the seed
    does (a changed config.yaml and a rolling restart; Redis itself for the cache)."""

    rate_limit: str | None = Field("/admin/rate-limit", pattern=r"^/")
    clear_cache: str | None = Field("/admin/cache/clear", pattern=r"^/")
    switch_llm: str | None = Field("/admin/llm", pattern=r"^/")


class LogsSection(Section):
    """The agent's request log, for log-rotation rehearsals: the file is the variable
    ``stack.agent.variables.log_file`` names (in the replica's data directory).

    ``format``: ``json`` (one object per line; ``request_id_field`` is the key of the
    request id, dots for nested keys) or ``text`` (the id appears in the line as a word).
    ``request_id_header``: the header carrying the id: the probe sends one of its own on
    every request, which the agent is expected to keep (a valid incoming one), log and
    return (null: a reply cannot be tied to its line, the rotation's counts are
    inconclusive, and failed probe requests are not looked for). ``reopen_signal``:
    what makes the agent reopen the file after it was moved (null: it cannot, and the
    file is rotated by copying and truncating it, as logrotate's ``copytruncate``)."""

    format: Literal["json", "text"] = "json"
    request_id_field: str = Field("request_id", min_length=1)
    request_id_header: str | None = Field("X-Request-Id", pattern=_HEADER_NAME.pattern)
    reopen_signal: Literal["SIGHUP", "SIGUSR1", "SIGUSR2"] | None = "SIGHUP"


class ContractSection(Section):
    """``stack.agent.contract``: how to talk to the agent (defaults: the reference
    agent's)."""

    chat: ChatSection = Field(default_factory=ChatSection)
    reply: ReplySection = Field(default_factory=ReplySection)
    health_path: str = Field("/health", pattern=r"^/")
    metrics_path: str | None = Field("/metrics", pattern=r"^/")
    client_id_header: str = Field("X-Client-Id", pattern=_HEADER_NAME.pattern)
    admin: AdminSection = Field(default_factory=AdminSection)
    #: Redis glob patterns of the agent's cached answers (clear_cache without an admin
    #: endpoint deletes these and nothing else)
    cache_keys: list[str] = Field(default_factory=lambda: ["agent:answer:*"])
    logs: LogsSection = Field(default_factory=LogsSection)

    @field_validator("admin", mode="before")
    @classmethod
    def _no_admin(cls, value: object) -> object:
        # `admin: null`: the agent has no admin endpoint at all
        if value is None:
            return {"rate_limit": None, "clear_cache": None, "switch_llm": None}
        return value

    @field_validator("cache_keys")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern or pattern.strip("*?") == "":
                raise ValueError(f"{pattern!r} would match every key: name the agent's answer "
                                 "keys, e.g. 'agent:answer:*'")
            if pattern.startswith(AGENTVERIFY_KEY_PREFIX):
                raise ValueError(f"{pattern!r} is agentverify's own namespace "
                                 f"({AGENTVERIFY_KEY_PREFIX}*): name the agent's answer keys")
        return value


# ------------------------------------------------------------------------------ templates


def _known_templates(value: Any) -> None:
    unknown = sorted(_template_names(value) - set(_TEMPLATE_NAMES))
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}} in the request template; "
                         "expected {message} or {session} (write {{ and }} for braces)")


def _template_names(value: Any) -> set[str]:
    if isinstance(value, str):
        return {m.group(1) for m in _TEMPLATE.finditer(value) if m.group(1)}
    if isinstance(value, Mapping):
        return set().union(*(_template_names(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_template_names(v) for v in value)) if value else set()
    return set()


def render_template(value: Any, values: Mapping[str, Any]) -> Any:
    """``value`` with ``{name}`` placeholders filled from ``values``, recursively.

    A string that is exactly one placeholder takes the value as it is (``None`` stays
    JSON ``null``); inside a longer string the value is written as text.

    Example:
        >>> render_template({"q": "{message}", "c": "{session}", "t": "ask: {message}"},
        ...                 {"message": "hi", "session": None})
        {'q': 'hi', 'c': None, 't': 'ask: hi'}
    """
    if isinstance(value, str):
        whole = _TEMPLATE.fullmatch(value)
        if whole and whole.group(1):
            return values.get(whole.group(1))

        def one(m: re.Match[str]) -> str:
            if m.group(0) in ("{{", "}}"):
                return m.group(0)[0]
            got = values.get(m.group(1))
            return "" if got is None else str(got)

        return _TEMPLATE.sub(one, value)
    if isinstance(value, Mapping):
        return {k: render_template(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [render_template(v, values) for v in value]
    return value


# ------------------------------------------------------------------------------ runtime


@dataclass(frozen=True)
class ChatRequest:
    """One chat request, ready to send: ``method``, ``path`` (with the query string for
    GET), the ``json`` body (None for GET) and ``headers``."""

    method: str
    path: str
    json: Any
    headers: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class AgentReply:
    """What one reply said, read through the contract.

    Attributes:
        status: HTTP status (0: no response).
        answer: The answer text (None unless the reply is a 2xx).
        sources: Titles of the sources, best first (None: the contract maps none).
        version: The serving version (None: not mapped, or missing in an error reply).
        replica: The replica that answered (as ``stack.agent.variables.replica`` told it).
        cached: Whether the answer came from the cache (None: not mapped).
        completion_tokens: Completion tokens the reply reports (None: not mapped).
        error: The error message of a non-2xx reply.
        text: The body as text, truncated (for messages).
    """

    status: int
    answer: str | None = None
    sources: tuple[str, ...] | None = None
    version: str | None = None
    replica: str | None = None
    cached: bool | None = None
    completion_tokens: int | None = None
    error: str | None = None
    text: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def describe(self) -> str:
        """``200 from agent-1 (v2)`` or ``502 llm_error: ...`` for progress lines."""
        who = " ".join(x for x in (self.replica and f"from {self.replica}",
                                   self.version and f"({self.version})") if x)
        if self.ok:
            return f"{self.status} {who}".strip()
        return f"{self.status} {who} {self.error or quote(self.text, 120)}".replace("  ", " ")


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` on one line, cut at ``limit`` characters (for messages)."""
    one = " ".join(text.split())
    return one if len(one) <= limit else one[:limit] + "..."


class AgentContract:
    """The agent's contract, compiled: build chat requests, read replies.

    Args:
        section: ``stack.agent.contract`` (a :class:`ContractSection`).

    Example:
        >>> c = AgentContract(ContractSection(chat={"path": "/v1/ask",
        ...                                         "body": {"question": "{message}"}}))
        >>> c.request("Warranty?", client_id="acme").headers
        {'X-Client-Id': 'acme'}
    """

    def __init__(self, section: ContractSection | None = None) -> None:
        self.section = section or ContractSection()
        reply = self.section.reply
        self._paths: dict[str, ReplyPath | None] = {
            name: ReplyPath.parse(getattr(reply, name)) if getattr(reply, name) else None
            for name in ReplySection.model_fields}

    @classmethod
    def default(cls) -> AgentContract:
        """The reference agent's contract."""
        return cls(ContractSection())

    @classmethod
    def from_config(cls, config: Any) -> AgentContract:
        """The contract of a resolved :class:`~agentverify.config.Config`."""
        return cls(config.stack.agent.contract)

    # --------------------------------------------------------------- properties

    @property
    def health_path(self) -> str:
        return self.section.health_path

    @property
    def metrics_path(self) -> str | None:
        return self.section.metrics_path

    @property
    def client_id_header(self) -> str:
        return self.section.client_id_header

    @property
    def admin(self) -> AdminSection:
        return self.section.admin

    @property
    def cache_keys(self) -> list[str]:
        return list(self.section.cache_keys)

    def maps(self, name: str) -> bool:
        """Whether the reply carries ``name`` (``"cached"``, ``"replica"`` ...)."""
        return self._paths.get(name) is not None

    # ------------------------------------------------------------------ requests

    def request(self, message: str, *, session: str | None = None,
                client_id: str | None = None,
                headers: Mapping[str, str] | None = None) -> ChatRequest:
        """The chat request asking ``message``."""
        chat = self.section.chat
        values = {"message": message, "session": session}
        body = render_template(chat.body, values)
        out_headers = {k: str(render_template(v, values)) for k, v in chat.headers.items()}
        if client_id is not None:
            out_headers[self.client_id_header] = client_id
        out_headers.update(headers or {})
        if chat.method == "GET":
            query = urlencode({k: v for k, v in body.items() if v is not None}, doseq=True)
            sep = "&" if "?" in chat.path else "?"
            return ChatRequest("GET", chat.path + (sep + query if query else ""), None,
                               out_headers)
        return ChatRequest(chat.method, chat.path, body, out_headers)

    def send(self, client: httpx.Client, message: str, *, base_url: str = "",
             session: str | None = None, client_id: str | None = None,
             headers: Mapping[str, str] | None = None) -> httpx.Response:
        """Send the chat request with ``client`` (``base_url`` prefixes the path)."""
        req = self.request(message, session=session, client_id=client_id, headers=headers)
        return client.request(req.method, base_url + req.path, json=req.json,
                              headers=req.headers)

    def ask(self, client: httpx.Client, message: str, *, base_url: str = "",
            session: str | None = None, client_id: str | None = None,
            headers: Mapping[str, str] | None = None, strict: bool = True,
            timeout: float | None = None) -> AgentReply:
        """Send the chat request and read the reply (see :meth:`parse`); ``timeout``
        overrides the client's own for this request."""
        req = self.request(message, session=session, client_id=client_id, headers=headers)
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        resp = client.request(req.method, base_url + req.path, json=req.json,
                              headers=req.headers, **extra)
        return self.parse(resp.status_code, resp.headers, resp.text, strict=strict,
                          request=req.describe())

    # ------------------------------------------------------------------- replies

    def parse(self, status: int, headers: Mapping[str, str], text: str, *,
              strict: bool = True, request: str | None = None) -> AgentReply:
        """Read one reply.

        A 2xx reply must carry the answer (and the sources and version, when mapped);
        with ``strict`` a reply that does not raises :class:`ContractError`, otherwise
        what is missing stays None. A non-2xx reply is returned with its error message.

        Raises:
            ContractError: ``strict`` and a 2xx reply that does not match the contract.
        """
        low = {k.lower(): v for k, v in headers.items()}
        request = request or f"{self.section.chat.method} {self.section.chat.path}"
        body: Any = None
        body_error: str | None = None
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body_error = "the body is not JSON"

        def fail(key: str, problem: str) -> ContractError:
            path = self._paths.get(key)
            what = (f"the agent's reply does not match stack.agent.contract.reply.{key} "
                    f"({str(path)!r}): {problem}")
            err = ContractError(f"{what}; {request} answered {status}: {quote(text)!r}")
            err.problem = what  # type: ignore[attr-defined]  # without the reply: groups alike
            return err

        def value(key: str, *, required: bool) -> Any:
            path = self._paths.get(key)
            if path is None:
                return None
            if body_error is not None and path.header is None:
                if required and strict:
                    raise fail(key, body_error)
                return None
            try:
                return path.get(low, body)
            except _Missing as exc:
                if required and strict:
                    raise fail(key, str(exc)) from None
                return None

        ok = 200 <= status < 300
        version = value("version", required=ok)
        replica = value("replica", required=False)
        if not ok:
            error = value("error", required=False)
            return AgentReply(status=status, version=_text(version), replica=_text(replica),
                              error=quote(error if isinstance(error, str) else
                                          json.dumps(error) if error is not None else text, 200),
                              text=quote(text))
        answer = value("answer", required=True)
        if answer is not None and not isinstance(answer, str):
            if strict:
                raise fail("answer", f"expected a string, got {_kind(answer)}")
            answer = None
        sources = self._sources(value("sources", required=True), fail)
        cached = value("cached", required=True)
        if cached is not None and not isinstance(cached, bool):
            if strict:
                raise fail("cached", f"expected true or false, got {_kind(cached)}")
            cached = None
        tokens = value("completion_tokens", required=False)
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)):
            tokens = None
        if version is not None and not isinstance(version, (str, int, float)):
            if strict:
                raise fail("version", f"expected a string, got {_kind(version)}")
            version = None
        return AgentReply(status=status, answer=answer, sources=sources,
                          version=_text(version), replica=_text(replica), cached=cached,
                          completion_tokens=tokens, text=quote(text))

    def _sources(self, raw: Any, fail: Any) -> tuple[str, ...] | None:
        if self._paths.get("sources") is None:
            return None
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise fail("sources", f"expected a list, got {_kind(raw)}")
        title = self._paths.get("source_title")
        out = []
        for i, item in enumerate(raw):
            if title is None or title.text == "$":
                got = item
            else:
                try:
                    got = title.get({}, item)
                except _Missing as exc:
                    raise fail("source_title", f"source {i}: {exc}") from None
            out.append(got if isinstance(got, str) else json.dumps(got))
        return tuple(out)

    def identity(self, headers: Mapping[str, str], text: str) -> tuple[str | None, str | None]:
        """``(version, replica)`` of any reply, or None for what it does not carry.

        Cheap when both are headers (the probe calls this for every request).
        """
        low = {k.lower(): v for k, v in headers.items()}
        out: list[str | None] = []
        body: Any = ...
        for key in ("version", "replica"):
            path = self._paths.get(key)
            if path is None:
                out.append(None)
                continue
            if path.header is None and body is ...:
                try:
                    body = json.loads(text) if text else None
                except ValueError:
                    body = None
            try:
                out.append(_text(path.get(low, body)))
            except _Missing:
                out.append(None)
        return out[0], out[1]

    # ------------------------------------------------------------------- transport

    def to_json(self) -> dict[str, Any]:
        """The contract as plain data (for the Locust child's plan)."""
        return self.section.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> AgentContract:
        return cls(ContractSection.model_validate(dict(data)) if data else None)

    def __repr__(self) -> str:
        chat = self.section.chat
        return f"AgentContract({chat.method} {chat.path}, answer={self.section.reply.answer!r})"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)
