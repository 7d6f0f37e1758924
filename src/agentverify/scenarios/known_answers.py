"""Known-answer questions: does the agent still answer from the right documents?

``known_answers:`` in the config lists questions whose answer must cite a given document
of the knowledge base. Fault rehearsals ask them to tell "slow" from "wrong"; the data
corruption drill asks them to detect corrupted vectors or poisoned cache entries, and to
prove a restore put everything back.

Example:
    >>> check_known_answer(ctx, KnownAnswer(question="How do I reset my password?",
    ...                                     source="password-reset.md"))  # doctest: +SKIP
    None
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from agentverify.config import KnownAnswer
    from agentverify.scenarios.runner import ScenarioContext

__all__ = ["check_known_answer", "check_known_answers"]


def _cited(sources: list[Any]) -> list[str]:
    names = []
    for s in sources:
        if isinstance(s, dict):
            names += [str(s[k]) for k in ("title", "source") if s.get(k)]
        else:
            names.append(str(s))
    return names


def check_known_answer(ctx: ScenarioContext, known: KnownAnswer, *,
                       timeout: float = 10.0) -> str | None:
    """Ask one known question through the load balancer; ``None`` when the answer cites
    the expected document, else one line saying what came back instead."""
    try:
        resp = ctx.http.post("/chat", json={"message": known.question}, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{known.question!r}: {type(exc).__name__}: {exc}"
    if resp.status_code != 200:
        return f"{known.question!r}: HTTP {resp.status_code} {resp.text[:120]}"
    try:
        cited = _cited(resp.json().get("sources") or [])
    except ValueError:
        return f"{known.question!r}: the reply is not JSON: {resp.text[:120]!r}"
    wanted = known.source.lower()
    if any(c.lower() == wanted for c in cited):
        return None
    return f"{known.question!r}: expected a source {known.source!r}, got {cited or 'none'}"


def check_known_answers(ctx: ScenarioContext) -> list[str]:
    """Every configured known answer; one line per one that is wrong."""
    return [problem for known in ctx.config.known_answers
            if (problem := check_known_answer(ctx, known)) is not None]
