"""A steady probe through the load balancer that records every request.

While a rollout, rollback or scale runs, the probe sends requests at a fixed rate and
records each one's send time, latency, status and the version and replica that answered,
all through the agent's :class:`~agentverify.contract.AgentContract` (the reference
agent's ``X-Agent-Version`` / ``X-Agent-Replica`` headers by default). Its report gives
the facts rehearsals are gated on: failed requests, the longest time without a successful
answer, versions seen. A successful reply that does not match the contract is recorded
once (:attr:`ProbeReport.contract_problem`): a probe that cannot tell versions apart must
not make a rollout look fine.

Each request opens a fresh connection by default: a load-balancer reload closes idle
keep-alive connections, and a client that reuses one at that instant sees a reset that
says nothing about the service (RFC 9112 §9.3.1 lets clients retry those; httpx does
not). ``keepalive=True`` measures with a pooled client instead.

Example:
    >>> probe = Probe("http://127.0.0.1:8080", rps=25).start()   # doctest: +SKIP
    >>> stack.rolling_update("v2")
    >>> report = probe.stop()
    >>> report.failed, report.longest_gap_s
    (0, 0.06)
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from agentverify import _http
from agentverify.contract import AgentContract
from agentverify.errors import ContractError
from agentverify.traffic import UPSTREAM_HEADER, upstream_attempts

__all__ = ["Probe", "ProbeReport", "ProbeSample"]


@dataclass(frozen=True)
class ProbeSample:
    """One probe request: when it was sent (seconds since start), how it went."""

    t: float
    latency_s: float
    status: int | str
    version: str | None
    replica: str | None
    #: upstreams nginx tried for this request (2 or more: it was retried on another replica)
    attempts: int = 1
    #: the reply's request id (``stack.agent.contract.logs.request_id_header``), if any
    request_id: str | None = None
    #: the id the probe sent in that header (``probe-<tag>-<number>``; agents keep a valid
    #: incoming one): a request without a reply can be looked for in the agents' logs
    sent_id: str | None = None

    @property
    def log_id(self) -> str | None:
        """The id to look for in the agents' request logs: the reply's, else the sent one."""
        return self.request_id or self.sent_id

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def done(self) -> float:
        return self.t + self.latency_s


@dataclass
class ProbeReport:
    """What the probe saw between start and stop."""

    samples: list[ProbeSample]
    duration_s: float
    rps_target: float
    statuses: Counter[str] = field(default_factory=Counter)
    #: the first successful reply that did not match the agent's contract (one line)
    contract_problem: str | None = None

    @property
    def requests(self) -> int:
        return len(self.samples)

    @property
    def failed(self) -> int:
        return sum(1 for s in self.samples if not s.ok)

    @property
    def longest_gap_s(self) -> float:
        """Longest time without a successful answer (start and end of the probe count)."""
        done = sorted(s.done for s in self.samples if s.ok)
        if not done:
            return self.duration_s
        edges = [0.0, *done, self.duration_s]
        return max(b - a for a, b in zip(edges, edges[1:], strict=False))

    @property
    def versions(self) -> Counter[str]:
        return Counter(s.version or "?" for s in self.samples if s.ok)

    def failed_after(self, t: float) -> int:
        return sum(1 for s in self.samples if s.t >= t and not s.ok)

    def percentile_ms(self, q: float) -> float:
        lat = sorted(s.latency_s for s in self.samples if s.ok)
        if not lat:
            return 0.0
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000.0

    def error_ratio(self, version: str | None = None, since: float = 0.0) -> tuple[int, int]:
        """(failed, total) among requests answered by ``version`` (any if None) since t."""
        chosen = [s for s in self.samples if s.t >= since and
                  (version is None or s.version == version)]
        return sum(1 for s in chosen if not s.ok), len(chosen)

    def failures(self, limit: int = 5, where: dict[str, str] | None = None) -> list[str]:
        """The first ``limit`` failed requests, one line each; ``where``: what is known of
        a request id (e.g. which agent logged it), added to its line."""
        lines = []
        for s in [s for s in self.samples if not s.ok][:limit]:
            line = f"t={s.t:.2f}s {s.status} ({s.version or 'no version'})"
            if s.log_id:
                line += f" {s.log_id}"
                if where and s.log_id in where:
                    line += f": {where[s.log_id]}"
            lines.append(line)
        return lines

    @property
    def retried(self) -> int:
        """Requests nginx sent to more than one replica: each ran (at least partly) twice."""
        return sum(1 for s in self.samples if s.attempts > 1)

    def facts(self) -> dict[str, Any]:
        return {"probe_requests": self.requests, "failed_requests": self.failed,
                "retried_requests": self.retried,
                "probe_error_ratio": round(self.failed / self.requests, 4) if self.requests else 0.0,
                "longest_gap_s": round(self.longest_gap_s, 3),
                "duration_s": round(self.duration_s, 3),
                "probe_rps": round(self.requests / self.duration_s, 2) if self.duration_s else 0,
                "probe_p95_ms": round(self.percentile_ms(0.95), 2),
                "versions_seen": dict(self.versions)}

    def latency_series(self) -> list[list[float]]:
        return [[round(s.t, 3), round(s.latency_s * 1000.0, 2)] for s in self.samples]

    def failure_series(self, bucket_s: float = 1.0) -> list[list[float]]:
        """``[[t, failed requests sent in that second], ...]`` over the whole probe."""
        buckets = [0] * (int(self.duration_s // bucket_s) + 1)
        for s in self.samples:
            if not s.ok:
                buckets[min(int(s.t // bucket_s), len(buckets) - 1)] += 1
        return [[round(i * bucket_s, 3), float(n)] for i, n in enumerate(buckets)]


class Probe:
    """Steady traffic at ``rps`` through ``base_url`` in background threads.

    Args:
        base_url: the load balancer.
        rps: requests per second to send (sent on a fixed schedule).
        message: the question every request asks (a repeated question: cached answers).
        contract: how to ask it and read the replies (default: the reference agent's).
        timeout: per-request timeout; a request that times out counts as failed.
        keepalive: reuse connections (see the module docstring).
        headers: sent with every request (e.g. an ``X-Client-Id`` of its own, so a
            per-client rate limit judges the probe apart from the load).
    """

    def __init__(self, base_url: str, *, rps: float = 25.0,
                 message: str = "How do I reset my password?",
                 contract: AgentContract | None = None, timeout: float = 10.0,
                 keepalive: bool = False, workers: int = 32, unique: bool = False,
                 client_id: str | None = None, headers: dict[str, str] | None = None) -> None:
        if rps <= 0:
            raise ValueError("rps must be > 0")
        self.base_url = base_url.rstrip("/")
        self.rps = rps
        self.contract = contract or AgentContract.default()
        self.client_id = client_id
        self.headers = dict(headers or {})
        self.request = self.contract.request(message, client_id=client_id, headers=self.headers)
        self._problem: str | None = None
        self.message = message
        #: every request asks a question of its own (never cached: it reaches the LLM);
        #: the tag keeps it apart from every earlier probe's on a shared stack
        self.unique = unique
        self._tag = uuid.uuid4().hex[:8]
        self._count = itertools.count(1)
        self.timeout = timeout
        self.keepalive = keepalive
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")
        # one client for all requests (a client per request costs ~50 ms of CPU for its
        # TLS context); without keep-alive every request still opens its own connection
        limits = None if keepalive else httpx.Limits(max_keepalive_connections=0)
        self._client = _http.new_client(timeout=timeout, limits=limits) if limits else \
            _http.new_client(timeout=timeout)
        self._samples: list[ProbeSample] = []
        #: send times of the requests still waiting for an answer, by request number
        self._in_flight: dict[int, float] = {}
        self._request_id_header = self.contract.section.logs.request_id_header
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._stopped_at: float | None = None

    @property
    def started_at(self) -> float:
        """``time.monotonic()`` at start: sample ``t`` values count from here."""
        return self._t0

    @property
    def elapsed(self) -> float:
        """Seconds since the probe started (the time base of samples)."""
        return time.monotonic() - self._t0

    def start(self) -> Probe:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._schedule, name="probe-scheduler",
                                        daemon=True)
        self._thread.start()
        return self

    def _schedule(self) -> None:
        interval = 1.0 / self.rps
        n = 0
        while not self._stop.is_set():
            due = self._t0 + n * interval
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            self._pool.submit(self._one)
            n += 1

    def _one(self) -> None:
        with self._lock:  # taken and registered at once: wait_answered sees every request
            t = time.monotonic()  # sent before the moment it waits for
            number = next(self._count)
            self._in_flight[number] = t - self._t0
        try:
            self._send(t, number)
        finally:
            with self._answered:
                self._in_flight.pop(number, None)
                self._answered.notify_all()

    def _send(self, t: float, number: int) -> None:
        req = self.request
        status: int | str
        version = replica = request_id = sent_id = None
        attempts = 0
        try:
            if self.unique:
                req = self.contract.request(f"{self.message} (probe {self._tag}-{number})",
                                            client_id=self.client_id, headers=self.headers)
            headers = httpx.Headers(req.headers)  # any case: one header of each name
            if not self.keepalive:
                headers["Connection"] = "close"
            if self._request_id_header:
                # an id of its own, which agents keep and log: a request that got no answer
                # can still be looked for in the agents' request logs (see request_id)
                sent_id = headers[self._request_id_header] = f"probe-{self._tag}-{number}"
            resp = self._client.request(req.method, self.base_url + req.path, json=req.json,
                                        headers=headers)
            status = resp.status_code
            version, replica = self.contract.identity(resp.headers, resp.text)
            attempts = upstream_attempts(resp.headers.get(UPSTREAM_HEADER))
            if self._request_id_header:
                request_id = resp.headers.get(self._request_id_header)
            if status == 200 and self._problem is None:
                try:
                    self.contract.parse(status, resp.headers, resp.text,
                                        request=req.describe())
                except ContractError as exc:
                    self._problem = str(exc)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        sample = ProbeSample(t - self._t0, time.monotonic() - t, status, version, replica,
                             attempts, request_id, sent_id)
        with self._lock:
            self._samples.append(sample)

    def wait_answered(self, until: float, timeout: float | None = None) -> bool:
        """Wait until every request sent before ``until`` (seconds since the start) has
        its answer or its failure recorded; False if some are still out after
        ``timeout`` (default: the request timeout and a second)."""
        deadline = time.monotonic() + (self.timeout + 1.0 if timeout is None else timeout)
        with self._answered:
            while any(sent < until for sent in self._in_flight.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._answered.wait(left)
        return True

    def snapshot(self) -> ProbeReport:
        """The report so far, without stopping."""
        with self._lock:
            samples = sorted(self._samples, key=lambda s: s.t)
        return self._report(samples, self.elapsed)

    def stop(self) -> ProbeReport:
        """Stop sending, wait for requests in flight, return the report. Idempotent."""
        if self._stopped_at is None:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._pool.shutdown(wait=True)
            self._stopped_at = self.elapsed
            self._client.close()
        with self._lock:
            samples = sorted(self._samples, key=lambda s: s.t)
        return self._report(samples, self._stopped_at)

    def _report(self, samples: list[ProbeSample], duration: float) -> ProbeReport:
        statuses: Counter[str] = Counter(str(s.status) for s in samples)
        return ProbeReport(samples=samples, duration_s=duration, rps_target=self.rps,
                           statuses=statuses, contract_problem=self._problem)
