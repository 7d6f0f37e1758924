"""HTTP-level fault knobs of the LLM stub: the ``/faults`` body and who gets which fault.

``POST /faults`` replaces the settings (omitted keys take their defaults, the counters
restart), ``GET /faults`` shows them with counters, ``DELETE /faults`` removes every
fault (and releases requests held by a hang). The body is a JSON object; every key is
optional and an unknown key, a wrong type or a value out of range is one 422 whose
``error.message`` names the key, what is expected and what was sent:

==================  ===========================  ==================================================
key                 type, range (default)        meaning
==================  ===========================  ==================================================
``error_rate``      number 0..1 (0; 1.0 when     share of matching requests that fail, by the
                    ``first_n`` is given or      deterministic rule: the k-th matching request
                    ``mode`` is ``hang``)        fails iff ``floor(k*rate) > floor((k-1)*rate)``
                                                 (0.5: every 2nd, 0.25: every 4th, 1: all)
``status_code``     int 400..599 (500;           the HTTP status a failing request gets; 429 is
                    504 in ``hang`` mode)        a rate-limit error, 5xx a ``server_error``
``mode``            ``error`` | ``hang``         ``error``: answer ``status_code`` at once;
                    (``error``)                  ``hang`` (alias ``timeout``): accept the request
                                                 and send nothing until the client gives up or
                                                 ``hang_s`` passes, then answer ``status_code``
``hang_s``          number 0<..3600 (120)        longest hang (only with ``mode: hang``)
``retry_after_s``   number 0..3600 or null (1)   sent as ``Retry-After`` (whole seconds, rounded
                                                 up) and ``retry-after-ms`` on 429 and 503; null
                                                 sends neither; giving it with another status
                                                 is an error
``latency_ms``      number 0..600000 (0)         added before the response starts (headers) of
                                                 every matching request in the window
``first_token_ms``  number 0..600000 (0)         streamed chats: headers and the role chunk go
                                                 out at once, the first content chunk this late
``first_n``         int >= 1 or null             the window in requests: only the first N
                                                 matching requests are faulted, then all pass
``duration_s``      number 0<..86400 or null     the window in seconds: faults expire this long
                                                 after the POST (a hang in progress ends then)
``models``          list of strings or null      only requests for these models match
``endpoints``       list of ``chat`` |           only these endpoints match
                    ``embeddings`` or null
==================  ===========================  ==================================================

A request *matches* when its model and endpoint pass the filters; matching requests
are counted from 1 since the last POST, and the rate rule applies to that count, so a
fault plan is reproducible request by request. ``GET /faults`` returns the effective
settings plus ``active`` (a new matching request would be faulted now), ``matched``
(every matching request since the POST, in or out of the window), ``injected``
(failed or hung), ``passed`` (``matched - injected``), ``hanging`` (held right now),
``spent`` (``first_n`` used up), ``expired`` (``duration_s`` elapsed) and
``expires_in_s`` (seconds left, null without ``duration_s``).

An injected error has OpenAI's body, ``{"error": {"message", "type", "param", "code"}}``:
429 is ``type: "requests", code: "rate_limit_exceeded"`` as OpenAI's own rate limit;
5xx is ``type: "server_error", code: "injected_fault"``; another 4xx is
``type: "invalid_request_error", code: "injected_fault"``; every error carries an
``x-request-id``. A hang the client gave up on is logged (call log, metrics) with
status 499, nginx's "client closed request".

What the official ``openai`` SDK does with them (read in its ``_base_client.py``, 3.x):
it retries 408, 409, 429 and every 5xx, and timeouts and connection errors, up to
``max_retries`` times (default 2), each attempt sending ``x-stainless-retry-count``;
it waits ``retry-after-ms``, else ``Retry-After``, when that is above 0 and at most
120 s (60 s in 1.x), else ``0.5 s * 2**n`` capped at 8 s, minus up to 25% jitter; a
``Retry-After`` above 120 s makes 3.x give up at once. So ``retry_after_s: 0`` means
"retry on your own backoff". A hang surfaces as ``APITimeoutError`` once the client's
``timeout`` passes (the SDK's default is 600 s).

Example:
    >>> faults = FaultInjector()
    >>> faults.configure(FaultSettings(error_rate=0.5))
    >>> [faults.decide("m", "chat").fail for _ in range(4)]
    [False, True, False, True]
    >>> faults.configure(FaultSettings(first_n=2, status_code=429, retry_after_s=0.2))
    >>> [d is not None and d.fail for d in (faults.decide("m", "chat") for _ in range(3))]
    [True, True, False]
    >>> injected_error(429, 0.2, "m", "chat")[2]
    {'retry-after': '1', 'retry-after-ms': '200'}
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "Endpoint",
    "FaultSettings",
    "FaultDecision",
    "FaultInjector",
    "injected_error",
    "describe_validation_error",
    "RETRY_AFTER_STATUSES",
]

Endpoint = Literal["chat", "embeddings"]
Mode = Literal["error", "hang"]

#: Statuses that carry ``Retry-After`` (HTTP defines it for 429 and 503).
RETRY_AFTER_STATUSES = frozenset({429, 503})

_DEFAULT_STATUS = {"error": 500, "hang": 504}


class FaultSettings(BaseModel):
    """The ``POST /faults`` body (see the module docstring); every field is optional.

    Example:
        >>> FaultSettings(error_rate=0.25, status_code=503, endpoints=["chat"]).active
        True
        >>> s = FaultSettings(mode="timeout", hang_s=5)
        >>> (s.mode, s.error_rate, s.status_code)
        ('hang', 1.0, 504)
    """

    model_config = ConfigDict(extra="forbid")

    error_rate: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    status_code: int = Field(500, ge=400, le=599)
    latency_ms: float = Field(0.0, ge=0.0, le=600_000.0, allow_inf_nan=False)
    models: list[str] | None = None
    endpoints: list[Endpoint] | None = None
    mode: Mode = "error"
    hang_s: float = Field(120.0, gt=0.0, le=3600.0, allow_inf_nan=False)
    retry_after_s: float | None = Field(1.0, ge=0.0, le=3600.0, allow_inf_nan=False)
    first_n: int | None = Field(None, ge=1, le=1_000_000_000)
    duration_s: float | None = Field(None, gt=0.0, le=86_400.0, allow_inf_nan=False)
    first_token_ms: float = Field(0.0, ge=0.0, le=600_000.0, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _defaults_that_depend_on_other_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        mode = "hang" if data.get("mode") in ("hang", "timeout") else "error"
        # {"first_n": 3} or {"mode": "hang"} alone must do what it says, not nothing.
        if data.get("error_rate") is None and (data.get("first_n") is not None or mode == "hang"):
            data["error_rate"] = 1.0
        if data.get("status_code") is None:
            data["status_code"] = _DEFAULT_STATUS[mode]
        return data

    @field_validator("mode", mode="before")
    @classmethod
    def _timeout_is_hang(cls, value: Any) -> Any:
        return "hang" if value == "timeout" else value

    @model_validator(mode="after")
    def _consistent(self) -> FaultSettings:
        given = self.model_fields_set
        if "hang_s" in given and self.mode != "hang":
            raise ValueError("hang_s applies only with mode: hang")
        if "retry_after_s" in given and self.retry_after_s is not None \
                and self.status_code not in RETRY_AFTER_STATUSES:
            raise ValueError(f"retry_after_s is sent only with status_code 429 or 503, "
                             f"not {self.status_code}")
        return self

    @property
    def active(self) -> bool:
        """Whether the settings change any request at all."""
        return self.error_rate > 0.0 or self.latency_ms > 0.0 or self.first_token_ms > 0.0

    def matches(self, model: str, endpoint: str) -> bool:
        """Whether a request for ``model`` on ``endpoint`` is subject to these faults."""
        return (self.models is None or model in self.models) and (
            self.endpoints is None or endpoint in self.endpoints
        )


@dataclass(frozen=True)
class FaultDecision:
    """What happens to one matching request inside the fault window.

    Attributes:
        fail: The request fails (``mode`` error) or hangs (``mode`` hang).
        mode: ``"error"`` or ``"hang"``.
        status: The status a failing request is answered with.
        retry_after_s: ``Retry-After`` of that answer (429 and 503 only; None: no header).
        delay_s: Seconds to wait before the response starts.
        first_token_s: Seconds between the role chunk and the first content chunk of a stream.
        hang_s: Longest hang, already cut to what is left of ``duration_s``.
    """

    fail: bool
    mode: str
    status: int
    retry_after_s: float | None
    delay_s: float
    first_token_s: float
    hang_s: float


class FaultInjector:
    """Decides, deterministically, which matching requests are faulted and how.

    The k-th matching request (k = 1, 2, ... since the last configure/clear) fails iff
    ``floor(k * rate) > floor((k - 1) * rate)`` and it is in the window (``k <= first_n``,
    less than ``duration_s`` since the configure): rate 0.5 fails every 2nd request,
    0.25 every 4th, 1.0 all of them.

    Args:
        clock: Monotonic seconds (injectable so tests need not wait for ``duration_s``).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._held: set[asyncio.Event] = set()
        self.configure(FaultSettings())

    def configure(self, settings: FaultSettings) -> None:
        """Replace the settings, restart the counts and release every held request."""
        self.settings = settings
        self.matched = 0
        self.injected = 0
        self._since = self._clock()
        # The rate as the decimal the user wrote (0.57 -> 57/100), so floor(k * rate)
        # is exact: in floats 0.57 * 100 is 56.99999999999999 and request 100 would pass.
        self._rate = Fraction(repr(settings.error_rate))
        for event in self._held:
            event.set()

    def clear(self) -> None:
        """Remove every fault."""
        self.configure(FaultSettings())

    def _left_s(self) -> float | None:
        """Seconds left of ``duration_s`` (never below 0), or None without one."""
        if self.settings.duration_s is None:
            return None
        return max(0.0, self.settings.duration_s - (self._clock() - self._since))

    @property
    def expired(self) -> bool:
        """``duration_s`` has elapsed since the configure."""
        left = self._left_s()
        return left is not None and left <= 0.0

    @property
    def spent(self) -> bool:
        """``first_n`` matching requests have been seen."""
        return self.settings.first_n is not None and self.matched >= self.settings.first_n

    @property
    def active(self) -> bool:
        """A new matching request would be faulted now."""
        return self.settings.active and not self.expired and not self.spent

    def decide(self, model: str, endpoint: str) -> FaultDecision | None:
        """Count one request and say what happens to it; None: it passes untouched."""
        s = self.settings
        if not s.active or not s.matches(model, endpoint):
            return None
        self.matched += 1
        k = self.matched
        left = self._left_s()
        if (s.first_n is not None and k > s.first_n) or (left is not None and left <= 0.0):
            return None
        num, den = self._rate.numerator, self._rate.denominator
        fail = (k * num) // den > ((k - 1) * num) // den
        if fail:
            self.injected += 1
        hang_s = s.hang_s if left is None else min(s.hang_s, left)
        return FaultDecision(fail, s.mode, s.status_code, s.retry_after_s, s.latency_ms / 1000.0,
                             s.first_token_ms / 1000.0, hang_s)

    async def hold(self, seconds: float, client_gone: Callable[[], Any]) -> bool:
        """Hang one request: wait ``seconds``, until a configure/clear, or the client leaves.

        Args:
            seconds: The longest wait.
            client_gone: Returns an awaitable that finishes when the client disconnects.

        Returns:
            True if the client went away first.
        """
        released = asyncio.Event()
        self._held.add(released)
        gone = asyncio.ensure_future(client_gone())
        woken = asyncio.ensure_future(released.wait())
        try:
            done, _ = await asyncio.wait({gone, woken}, timeout=seconds,
                                         return_when=asyncio.FIRST_COMPLETED)
            return gone in done
        finally:
            self._held.discard(released)
            for task in (gone, woken):
                task.cancel()

    def describe(self) -> dict[str, Any]:
        """Return the effective settings plus state and counters (module docstring)."""
        left = self._left_s()
        return {
            **self.settings.model_dump(),
            "active": self.active,
            "matched": self.matched,
            "injected": self.injected,
            "passed": self.matched - self.injected,
            "hanging": len(self._held),
            "spent": self.spent,
            "expired": left is not None and left <= 0.0,
            "expires_in_s": None if left is None else round(left, 3),
        }


def injected_error(status: int, retry_after_s: float | None, model: str, endpoint: str, *,
                   hung_s: float | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Return ``(status, body, headers)`` of an injected error, as OpenAI would answer.

    Args:
        status: The HTTP status.
        retry_after_s: Sent as ``Retry-After`` / ``retry-after-ms`` on 429 and 503.
        model: The requested model (OpenAI names it in a rate-limit message).
        endpoint: ``chat`` or ``embeddings``.
        hung_s: Seconds the request was held, for the message after a hang.

    Example:
        >>> status, body, headers = injected_error(500, 1.0, "m", "chat")
        >>> status, body["error"]["type"], body["error"]["code"], headers
        (500, 'server_error', 'injected_fault', {})
    """
    retry = retry_after_s
    headers: dict[str, str] = {}
    if status in RETRY_AFTER_STATUSES and retry is not None:
        # Retry-After is whole seconds (RFC 9110); the SDK prefers the exact retry-after-ms.
        headers = {"retry-after": str(math.ceil(retry)), "retry-after-ms": str(round(retry * 1000))}
    if hung_s is not None:
        message = (f"Injected fault: the LLM stub held this {endpoint} request for {hung_s:g}s "
                   "without answering.")
    elif status == 429:
        wait = f" Please try again in {retry:g}s." if retry is not None else ""
        message = f"Rate limit reached for {model} on requests per min (RPM) (injected by the LLM stub).{wait}"
    else:
        message = f"Injected fault: the LLM stub failed this {endpoint} request on purpose."
    if status == 429:
        type_, code = "requests", "rate_limit_exceeded"
    elif status >= 500:
        type_, code = "server_error", "injected_fault"
    else:
        type_, code = "invalid_request_error", "injected_fault"
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return status, body, headers


def describe_validation_error(exc: ValidationError) -> tuple[str, str | None]:
    """Return one line naming every bad key of a ``/faults`` body, and the first key.

    Example:
        >>> try:
        ...     FaultSettings.model_validate({"error_rate": 2})
        ... except ValidationError as exc:
        ...     describe_validation_error(exc)[0]
        'POST /faults: error_rate: Input should be less than or equal to 1 (got 2)'
    """
    parts: list[str] = []
    first: str | None = None
    known = ", ".join(FaultSettings.model_fields)
    for err in exc.errors(include_url=False):
        key = ".".join(str(p) for p in err["loc"])
        first = first or (str(err["loc"][0]) if err["loc"] else None)
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown key (known: {known})")
        elif err["type"] == "model_type":
            parts.append(f"the body must be a JSON object of fault settings (known keys: {known})")
        elif key:
            parts.append(f"{key}: {msg} (got {err['input']!r})")
        else:
            parts.append(msg)
    return "POST /faults: " + "; ".join(parts), first
