"""The Locust user that talks to the agent: ``POST /chat`` like a support client.

Imported only by the load child (:mod:`agentverify.load.child`): Locust gevent-patches
whatever process imports it. Each user has its own ``X-Client-Id`` (the agent's rate
limiter keys on it) and its own :class:`~agentverify.load.plan.PromptPicker`; every 200
answer is tallied in :data:`COUNTERS` (``cached``, ``usage``), every response's status in
``status_codes`` by :func:`count_statuses`.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from locust import FastHttpUser, constant, constant_throughput, task

from agentverify.load.plan import ClientCounters, LoadPlan, PromptPicker

__all__ = ["COUNTERS", "AgentChatUser", "count_statuses", "make_agent_user"]

#: what this process's users saw; a worker drains it into each stats report
COUNTERS = ClientCounters()

_numbers = itertools.count(1)


class AgentChatUser(FastHttpUser):
    """Asks the agent questions from the plan's prompt set, back to back.

    Configure it with :func:`make_agent_user`; the class itself is abstract.
    """

    abstract = True
    plan: LoadPlan
    wait_time = constant(0)

    def on_start(self) -> None:
        plan = self.plan
        self.client_id = f"{plan.client_prefix}-{os.getpid()}-{next(_numbers)}"
        self.picker = PromptPicker(plan.prompts, plan.repeat_ratio, plan.hot_set,
                                   seed=plan.seed, tag=self.client_id)
        self.headers = {"X-Client-Id": self.client_id}

    @task
    def chat(self) -> None:
        message, _repeated = self.picker.next()
        with self.client.post(self.plan.path, json={"message": message},
                              headers=self.headers, name=self.plan.path,
                              catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            try:
                body = resp.json()
            except ValueError:
                resp.failure("the answer is not JSON")
                return
            if not isinstance(body, dict) or "answer" not in body:
                resp.failure("the answer has no 'answer'")
                return
            COUNTERS.answer(body)


def make_agent_user(plan: LoadPlan) -> type[AgentChatUser]:
    """A concrete :class:`AgentChatUser` for ``plan`` (same name in master and workers,
    so Locust can dispatch it)."""
    attrs: dict[str, Any] = {
        "abstract": False,
        "plan": plan,
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
