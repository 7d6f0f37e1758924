"""The Locust user that talks to the agent like a support client, through its contract.

Imported only by the load child (:mod:`agentverify.load.child`): Locust gevent-patches
whatever process imports it. Each user asks the chat request of the plan's
:class:`~agentverify.contract.AgentContract` with its own client id (in the contract's
``client_id_header``: the agent's rate limiter keys on it) and its own
:class:`~agentverify.load.plan.PromptPicker`; every 200 answer is read through the
contract and tallied in :data:`COUNTERS` (cached, completion tokens), every response's
status in ``status_codes`` by :func:`count_statuses`. A 200 that does not match the
contract is a failure with the contract's one-line message.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from locust import FastHttpUser, constant, constant_throughput, task

from agentverify.contract import AgentContract
from agentverify.errors import ContractError
from agentverify.load.plan import ClientCounters, LoadPlan, PromptPicker

__all__ = ["COUNTERS", "AgentChatUser", "count_statuses", "make_agent_user"]

#: what this process's users saw; a worker drains it into each stats report
COUNTERS = ClientCounters()

_numbers = itertools.count(1)
#: whether this process already reported a reply that does not match the contract in full
_quoted = False


class AgentChatUser(FastHttpUser):
    """Asks the agent questions from the plan's prompt set, back to back.

    Configure it with :func:`make_agent_user`; the class itself is abstract.
    """

    abstract = True
    plan: LoadPlan
    contract: AgentContract
    wait_time = constant(0)

    def on_start(self) -> None:
        plan = self.plan
        self.client_id = f"{plan.client_prefix}-{os.getpid()}-{next(_numbers)}"
        self.picker = PromptPicker(plan.prompts, plan.repeat_ratio, plan.hot_set,
                                   seed=plan.seed, tag=self.client_id)

    @task
    def chat(self) -> None:
        message, _repeated = self.picker.next()
        req = self.contract.request(message, client_id=self.client_id)
        name = self.contract.section.chat.path
        with self.client.request(req.method, req.path, json=req.json, headers=req.headers,
                                 name=name, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            try:
                reply = self.contract.parse(resp.status_code, resp.headers, resp.text or "",
                                            request=req.describe())
            except ContractError as exc:
                # Locust groups failures by message: the first one quotes the reply, the
                # rest share one line (a reply quoted each time would be a group each)
                global _quoted
                resp.failure(getattr(exc, "problem", str(exc)) if _quoted else str(exc))
                _quoted = True
                return
            COUNTERS.answer(reply.cached, reply.completion_tokens)


def make_agent_user(plan: LoadPlan) -> type[AgentChatUser]:
    """A concrete :class:`AgentChatUser` for ``plan`` (same name in master and workers,
    so Locust can dispatch it)."""
    attrs: dict[str, Any] = {
        "abstract": False,
        "plan": plan,
        "contract": AgentContract.from_json(plan.contract),
        "host": plan.host,
        "network_timeout": plan.request_timeout_s,
        "connection_timeout": plan.request_timeout_s,
        "wait_time": constant_throughput(plan.user_rps) if plan.user_rps else constant(0),
        "__module__": __name__,
    }
    return type("AgentChatUser", (AgentChatUser,), attrs)


def count_statuses(counters: ClientCounters) -> Any:
    """A listener for Locust's ``request`` event counting every response's status
    (``0``: no response), for the built-in user and a user's own locustfile alike."""

    def on_request(response: Any = None, exception: Any = None, **_: Any) -> None:
        code = getattr(response, "status_code", None) or 0
        counters.status(int(code))

    return on_request
