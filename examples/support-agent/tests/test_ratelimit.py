"""The limiter's decision and its fail-open error (the Lua bucket runs in test_real_stack)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from support_agent.ratelimit import BUCKET_PREFIX, Decision, RateLimiter, RateLimitUnavailable


@pytest.mark.parametrize(("ms", "header"), [(1, "1"), (999, "1"), (1000, "1"), (1001, "2"), (0, "1")])
def test_retry_after_is_whole_seconds_rounded_up(ms: int, header: str) -> None:
    assert Decision(allowed=False, retry_after_ms=ms).retry_after == header


class ScriptClient:
    def __init__(self, result: Any) -> None:
        self.result = result
        self.calls: list[dict[str, Any]] = []

    def register_script(self, source: str) -> Any:
        assert "redis.call('TIME')" in source

        async def run(keys: list[str], args: list[str]) -> Any:
            self.calls.append({"keys": keys, "args": args})
            if isinstance(self.result, Exception):
                raise self.result
            return self.result

        return run


def test_take_passes_rate_and_burst_and_reads_the_answer() -> None:
    client = ScriptClient([0, 450])
    decision = asyncio.run(RateLimiter(client, 2.5, 7).take("customer:acme"))
    assert decision == Decision(allowed=False, retry_after_ms=450)
    [call] = client.calls
    assert call["args"] == ["2.5", "7"] and call["keys"][0].startswith(BUCKET_PREFIX)
    assert "acme" not in call["keys"][0]  # client ids are hashed into fixed-size keys


def test_redis_errors_become_unavailable() -> None:
    limiter = RateLimiter(ScriptClient(RedisConnectionError("refused")), 1.0, 1)
    with pytest.raises(RateLimitUnavailable, match="ConnectionError: refused"):
        asyncio.run(limiter.take("c"))
