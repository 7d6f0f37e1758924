"""What a load run does, shared by the parent and the Locust child (no Locust here).

:class:`LoadPlan` is written as JSON by the driver and read by the child and its
workers, so all of them run the same users against the same host. :class:`PromptPicker`
decides, per request, between a repeated question from a small hot set (served from the
agent's cache after its first answer) and a fresh one made unique with a suffix, so it
can never be a cache hit. :class:`ClientCounters` tallies what the answers said
(``cached``, ``usage``) and the status codes, and travels from Locust workers to the
master inside their regular stats reports.

Example:
    >>> picker = PromptPicker(["a?", "b?", "c?"], repeat_ratio=0.0, hot_set=2,
    ...                       seed="s", tag="u1")
    >>> picker.next()
    ('a? (ref u1-1)', False)
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = ["ClientCounters", "LoadPlan", "PromptPicker", "SHAPES"]

SHAPES = ("constant", "ramp", "step")


@dataclass(frozen=True)
class LoadPlan:
    """Everything the child needs to run one load.

    Attributes:
        host: base URL of the target (the stack's load balancer); loopback only.
        users: peak number of concurrent users.
        spawn_rate: users started per second.
        duration_s: how long the load runs (the shape ends it).
        shape: ``constant`` (users held for the duration), ``ramp`` (1 -> users
            linearly over the duration) or ``step`` (``steps`` equal stages).
        steps: number of stages of the ``step`` shape.
        repeat_ratio: share of requests that ask a question from the hot set.
        hot_set: how many prompts make the hot set.
        prompts: the questions.
        workers: Locust worker processes (0: the child runs the users itself).
        locustfile: a user's own locustfile instead of the built-in agent user.
        user_rps: requests per second per user (``constant_throughput``); ``None``: no
            think time.
        client_prefix: prefix of each user's ``X-Client-Id`` and of fresh-question
            suffixes; unique per run so a fresh question is never cached from before.
        seed: seeds every user's choices (runs are repeatable).
        interval_s: seconds between snapshots.
        request_timeout_s: connect and network timeout of one request.
        stop_timeout_s: seconds users get to finish their request in flight at the stop
            (so every request the agent answered is counted on both sides).
        contract: the agent's contract as plain data
            (:meth:`~agentverify.contract.AgentContract.to_json`; empty: the reference
            agent's): how users ask and how their answers are read.
    """

    host: str
    users: int = 10
    spawn_rate: float = 5.0
    duration_s: float = 30.0
    shape: Literal["constant", "ramp", "step"] = "constant"
    steps: int = 4
    repeat_ratio: float = 0.5
    hot_set: int = 5
    prompts: tuple[str, ...] = ()
    workers: int = 0
    locustfile: str | None = None
    user_rps: float | None = None
    client_prefix: str = "agentverify"
    seed: int = 0
    interval_s: float = 1.0
    request_timeout_s: float = 30.0
    stop_timeout_s: float = 10.0
    contract: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        host = urlsplit(self.host).hostname or ""
        if not (host == "localhost" or host == "::1" or host.startswith("127.")):
            # load is only ever sent to this machine (DESIGN.md, "Rules that hold everywhere")
            raise ValueError(f"host: load targets only this machine (127.0.0.1, localhost, "
                             f"::1), got {self.host!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape: expected one of {', '.join(SHAPES)}, got {self.shape!r}")
        if self.locustfile is None and not self.prompts:
            raise ValueError("prompts: the built-in agent user needs at least one prompt")
        object.__setattr__(self, "prompts", tuple(self.prompts))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LoadPlan:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class PromptPicker:
    """Chooses each request's question for one user.

    Args:
        prompts: every question; the first ``hot_set`` are the repeated ones.
        repeat_ratio: probability that a request repeats a hot question.
        hot_set: size of the hot set.
        seed: seeds the choices (with ``tag``, so every user differs but reruns match).
        tag: what makes this user's fresh questions unique (its client id).
    """

    def __init__(self, prompts: tuple[str, ...] | list[str], repeat_ratio: float,
                 hot_set: int, *, seed: object, tag: str) -> None:
        if not prompts:
            raise ValueError("no prompts")
        self.prompts = list(prompts)
        self.hot = self.prompts[:max(1, min(hot_set, len(self.prompts)))]
        self.repeat_ratio = repeat_ratio
        self.tag = tag
        self._rng = random.Random(f"{seed}:{tag}")
        self._fresh = 0

    def next(self) -> tuple[str, bool]:
        """``(question, repeated)``; a fresh question ends in ``(ref TAG-N)``."""
        if self._rng.random() < self.repeat_ratio:
            return self._rng.choice(self.hot), True
        self._fresh += 1
        return f"{self._rng.choice(self.prompts)} (ref {self.tag}-{self._fresh})", False


@dataclass
class ClientCounters:
    """What the load saw in the answers, mergeable across Locust workers."""

    status_codes: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    completion_tokens: int = 0
    max_completion_tokens: int = 0

    def status(self, code: int) -> None:
        key = str(code)
        self.status_codes[key] = self.status_codes.get(key, 0) + 1

    def answer(self, cached: bool | None, tokens: int | None) -> None:
        """Count one 200 answer of the agent: whether it was cached and the completion
        tokens it reports (None: the agent's reply does not say)."""
        if cached is True:
            self.cache_hits += 1
        elif cached is False:
            self.cache_misses += 1
        if isinstance(tokens, int):
            # the sum is of fresh completions only (what the LLM billed in this run);
            # the maximum is over every answer, a cached one included
            if not cached:
                self.completion_tokens += tokens
            self.max_completion_tokens = max(self.max_completion_tokens, tokens)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def merge(self, data: dict[str, Any] | None) -> None:
        """Add another process's counters (a worker's report)."""
        if not data:
            return
        for code, n in (data.get("status_codes") or {}).items():
            self.status_codes[code] = self.status_codes.get(code, 0) + int(n)
        self.cache_hits += int(data.get("cache_hits", 0))
        self.cache_misses += int(data.get("cache_misses", 0))
        self.completion_tokens += int(data.get("completion_tokens", 0))
        self.max_completion_tokens = max(self.max_completion_tokens,
                                         int(data.get("max_completion_tokens", 0)))

    def drain(self) -> dict[str, Any]:
        """The counters so far, then zero (a worker sends only what is new)."""
        data = self.to_json()
        self.status_codes = {}
        self.cache_hits = self.cache_misses = 0
        self.completion_tokens = self.max_completion_tokens = 0
        return data
