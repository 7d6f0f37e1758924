"""Known-answer questions: does the agent still answer from the right documents?

``known_answers:`` in the config lists questions whose answer must cite a given document
of the knowledge base. Fault rehearsals ask them to tell "slow" from "wrong"; the data
corruption drill asks them to detect corrupted vectors or poisoned cache entries, and to
prove a restore put everything back.

Example:
    >>> check_known_answer(ctx, KnownAnswer(question="How do I reset my password?",
    ...                                     source="Resetting Your Nimbus Cloud Password"))
    ... # doctest: +SKIP
    None
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from agentverify.config import KnownAnswer
    from agentverify.scenarios.runner import ScenarioContext

__all__ = ["check_known_answer", "check_known_answers"]


def check_known_answer(ctx: ScenarioContext, known: KnownAnswer, *,
                       timeout: float | None = None) -> str | None:
    """Ask one known question through the load balancer (the agent's contract); ``None``
    when the answer cites the expected document, else one line saying what came back.
    ``timeout`` overrides the scenario client's for this question."""
    try:
        reply = ctx.contract.ask(ctx.http, known.question, strict=False, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{known.question!r}: {type(exc).__name__}: {exc}"
    if not reply.ok:
        return f"{known.question!r}: {reply.describe()}"
    if reply.sources is None:
        return f"{known.question!r}: the reply names no sources (contract reply.sources)"
    wanted = known.source.lower()
    if any(c.lower() == wanted for c in reply.sources):
        return None
    return (f"{known.question!r}: expected a source {known.source!r}, got "
            f"{list(reply.sources) or 'none'}")


def check_known_answers(ctx: ScenarioContext) -> list[str]:
    """Every configured known answer; one line per one that is wrong."""
    return [problem for known in ctx.config.known_answers
            if (problem := check_known_answer(ctx, known)) is not None]
