"""The toxics of the fault proxy: their attributes, how the API reads them, and how each one runs.

Eight types, as in Toxiproxy 2.12.0 (times in milliseconds unless noted):

    latency     latency, jitter           each chunk delayed by latency +/- jitter, pipelined
    bandwidth   rate (KB/s, 1 KB = 1000)  throttled; rate 0 passes nothing, keeps the connection
    slow_close  delay                     data passes; the close is held for delay
    timeout     timeout                   drops data; closes after timeout with no data (0: never)
    reset_peer  timeout                   after the first chunk, waits timeout, then TCP RST
    slicer      average_size, size_variation, delay (microseconds)   splits chunks
    limit_data  bytes                     passes at most bytes per connection, then closes
    noop        -                         passes everything

A toxic's *behaviour* is a coroutine ``pipe(stage, attrs, rng)`` that reads chunks from its
stage and emits them onward; the stage (see :mod:`agentverify.faults.proxy`) supplies
``get``/``emit``/``unget``/``close``. When a toxic is interrupted (updated or removed on a live
connection) a coroutine gives back what it held with ``unget``, so no byte is lost or
duplicated. The timing rules live in small pure functions (:func:`latency_delay`,
:class:`BandwidthSchedule`, :func:`slice_offsets`) that the unit tests drive directly.

Example:
    >>> spec = parse_toxic(b'{"type": "latency", "attributes": {"latency": 100}}', exists=lambda n: False)
    >>> spec.name, spec.stream, spec.toxicity, spec.attributes
    ('latency_downstream', 'downstream', 1.0, {'latency': 100, 'jitter': 0})
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentverify.faults._gojson import Float32, GoJSONError, decode_struct, loads

__all__ = [
    "ApiError",
    "TOXIC_TYPES",
    "ToxicSpec",
    "parse_toxic",
    "update_toxic",
    "parse_direction",
    "latency_delay",
    "BandwidthSchedule",
    "slice_offsets",
    "PIPES",
    "Chunk",
    "NOTHING",
    "TIMED_OUT",
]

UPSTREAM, DOWNSTREAM = 0, 1
DIRECTIONS = ("upstream", "downstream")


class ApiError(Exception):
    """An error the HTTP API answers with ``{"error": message, "status": status}``."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.message = message
        self.status = status


def bad_body(exc: GoJSONError) -> ApiError:
    return ApiError(f"bad request body: {exc}", 400)


ERR_INVALID_STREAM = ("stream was invalid, can be either upstream or downstream", 400)
ERR_INVALID_TYPE = ("invalid toxic type", 400)
ERR_TOXIC_EXISTS = ("toxic already exists", 409)
ERR_TOXIC_NOT_FOUND = ("toxic not found", 404)

#: type -> (Go struct name, ((attribute, Go kind), ...)) in Toxiproxy's field order.
TOXIC_TYPES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "latency": ("LatencyToxic", (("latency", "int64"), ("jitter", "int64"))),
    "bandwidth": ("BandwidthToxic", (("rate", "int64"),)),
    "slow_close": ("SlowCloseToxic", (("delay", "int64"),)),
    "timeout": ("TimeoutToxic", (("timeout", "int64"),)),
    "reset_peer": ("ResetToxic", (("timeout", "int64"),)),
    "slicer": ("SlicerToxic", (("average_size", "int"), ("size_variation", "int"), ("delay", "int"))),
    "limit_data": ("LimitDataToxic", (("bytes", "int64"),)),
    "noop": ("NoopToxic", ()),
}

#: Chunks a toxic's input holds before the reader waits (Go's channel buffer; latency buffers
#: 1024 so a slow toxic still reads ahead and keeps the throughput).
BUFFER_SIZE = {"latency": 1024}

_WRAPPER_FIELDS = {"name": "string", "type": "string", "stream": "string", "toxicity": "float32"}


def parse_direction(stream: str) -> int:
    """``upstream`` -> 0, ``downstream`` -> 1 (any case), as Go's ``stream.ParseDirection``.

    Raises:
        ApiError: 400 ``stream was invalid, ...``.
    """
    try:
        return DIRECTIONS.index(stream.lower())
    except ValueError:
        raise ApiError(*ERR_INVALID_STREAM) from None


@dataclass
class ToxicSpec:
    """One toxic as the API knows it (shared by every live link that runs it).

    ``attributes`` always holds every attribute of the type (omitted ones are 0).
    """

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, int] = field(default_factory=dict)

    @property
    def direction(self) -> int:
        return DIRECTIONS.index(self.stream.lower())

    @property
    def buffer_size(self) -> int:
        return BUFFER_SIZE.get(self.type, 0)

    def to_json(self) -> dict[str, Any]:
        """Toxiproxy's toxic JSON, in its field order."""
        return {"attributes": dict(self.attributes), "name": self.name, "type": self.type,
                "stream": self.stream, "toxicity": Float32(self.toxicity)}


def _decode_attributes(toxic_type: str, raw: Any, base: dict[str, int]) -> dict[str, int]:
    struct_name, fields = TOXIC_TYPES[toxic_type]
    if raw is None:
        return dict(base)
    try:
        given = decode_struct(raw, dict(fields), struct_name)
    except GoJSONError as exc:
        raise bad_body(exc) from None
    return {**base, **given}


def parse_toxic(body: bytes, *, exists: Callable[[str], bool]) -> ToxicSpec:
    """Read ``POST /proxies/{p}/toxics``, checking in Toxiproxy's order.

    Order: body JSON, stream (default ``downstream``), default name ``<type>_<stream>``,
    type, name conflict (``exists``), attributes (omitted ones 0, unknown keys ignored,
    ``null`` accepted).

    Raises:
        ApiError: 400 bad body / invalid stream / invalid type, 409 toxic already exists.
    """
    try:
        obj = loads(body)
        head = decode_struct(obj, _WRAPPER_FIELDS, "ToxicWrapper")
        raw_attrs = next((v for k, v in obj.items() if k.lower() == "attributes"), None)
        if raw_attrs is not None and not isinstance(raw_attrs, dict):
            decode_struct(raw_attrs, {}, "toxics.NoopToxic")
    except GoJSONError as exc:
        raise bad_body(exc) from None
    stream = head.get("stream", "downstream")
    parse_direction(stream)
    toxic_type = head.get("type", "")
    name = head.get("name", "") or f"{toxic_type}_{stream}"
    if toxic_type not in TOXIC_TYPES:
        raise ApiError(*ERR_INVALID_TYPE)
    if exists(name):
        raise ApiError(*ERR_TOXIC_EXISTS)
    zeros = {attr: 0 for attr, _ in TOXIC_TYPES[toxic_type][1]}
    attributes = _decode_attributes(toxic_type, raw_attrs, zeros)
    return ToxicSpec(name=name, type=toxic_type, stream=stream,
                     toxicity=head.get("toxicity", 1.0), attributes=attributes)


def update_toxic(spec: ToxicSpec, body: bytes) -> tuple[float, dict[str, int]]:
    """Read ``PATCH /proxies/{p}/toxics/{t}``: new (toxicity, attributes), merged over ``spec``.

    Omitted attributes and an omitted toxicity keep their values; name, type and stream
    cannot change (they are ignored).

    Raises:
        ApiError: 400 bad request body.
    """
    try:
        obj = loads(body)
        head = decode_struct(obj, {"toxicity": "float32"}, "struct")
    except GoJSONError as exc:
        raise bad_body(exc) from None
    raw_attrs = next((v for k, v in obj.items() if k.lower() == "attributes"), None)
    return head.get("toxicity", spec.toxicity), _decode_attributes(spec.type, raw_attrs, spec.attributes)


# --- timing rules (pure) ------------------------------------------------------------


def latency_delay(latency_ms: int, jitter_ms: int, rng: random.Random) -> float:
    """Seconds one chunk is held: ``latency`` plus a uniform jitter in ``[-jitter, jitter)``."""
    delay = latency_ms
    if jitter_ms > 0:
        delay += rng.randrange(2 * jitter_ms) - jitter_ms
    return delay / 1000.0


class BandwidthSchedule:
    """Toxiproxy's bandwidth pacing for one link: a time debt carried from chunk to chunk.

    Each chunk adds ``len / (rate * 1000)`` seconds of debt. A chunk larger than 100 ms
    worth of bytes goes out in pieces of ``rate * 100`` bytes, one every 100 ms; the rest
    goes out once the remaining debt has elapsed, and the timer's overshoot is credited
    to the next chunk.

    Example:
        >>> s = BandwidthSchedule(1000)          # 1 MB/s
        >>> pieces, wait = s.plan(480_000)
        >>> pieces, round(wait, 3)
        ([(0.1, 100000), (0.1, 100000), (0.1, 100000), (0.1, 100000)], 0.08)
    """

    PIECE_INTERVAL = 0.1

    def __init__(self, rate_kb: int):
        self.rate = rate_kb
        self.debt = 0.0

    def plan(self, size: int) -> tuple[list[tuple[float, int]], float]:
        """Pieces ``(wait_s, bytes)`` sent before the tail, and the wait before the tail."""
        self.debt += size / (self.rate * 1000.0)
        step = self.rate * 100
        pieces = []
        while size > step:
            pieces.append((self.PIECE_INTERVAL, step))
            size -= step
            self.debt -= self.PIECE_INTERVAL
        return pieces, max(self.debt, 0.0)

    def settle(self, waited: float) -> None:
        """Account the time the tail's wait really took (credit for the timer's overshoot)."""
        self.debt -= waited


def slice_offsets(start: int, end: int, average: int, variation: int, rng: random.Random) -> list[int]:
    """Cut ``[start, end)`` into slices of about ``average +/- variation`` bytes.

    Toxiproxy halves a range until it is within ``variation`` of the average, moving
    each midpoint by a random ``[-variation, variation)``. Where Go would recurse forever
    or panic (``average_size`` 0, a variation larger than the range) the midpoint is kept
    strictly inside the range, so every slice has at least one byte.

    Returns:
        The slice boundaries ``[s0, e0, s1, e1, ...]`` (each ``e_i == s_{i+1}``).

    Example:
        >>> slice_offsets(0, 24, 1, 0, random.Random(0))[:6]
        [0, 1, 1, 2, 2, 3]
    """
    out: list[int] = []
    stack = [(start, end)]
    while stack:
        lo, hi = stack.pop()
        if (hi - lo) - average <= variation or hi - lo <= 1:
            out += (lo, hi)
            continue
        mid = lo + (hi - lo) // 2
        if variation > 0:
            mid += rng.randrange(2 * variation) - variation
        mid = min(max(mid, lo + 1), hi - 1)
        stack.append((mid, hi))
        stack.append((lo, mid))
    return out


# --- behaviours ---------------------------------------------------------------------


class Chunk:
    """Bytes read from a socket and when (loop time), as they travel through the toxics."""

    __slots__ = ("data", "ts")

    def __init__(self, data: bytes, ts: float):
        self.data = data
        self.ts = ts


class Stage(Protocol):
    """What a toxic's coroutine sees of its place on a link (implemented in ``proxy.py``)."""

    state: dict[str, Any]

    def now(self) -> float: ...
    async def get(self, timeout: float | None = None) -> Chunk | None | object: ...
    async def emit(self, chunk: Chunk, rest: Chunk | None = ...) -> None: ...
    def unget(self, chunk: Chunk | None) -> None: ...
    def close(self) -> None: ...
    def reset_connection_after(self, seconds: float) -> Awaitable[None]: ...


#: Returned by ``Stage.get(timeout)`` when no chunk came in time.
TIMED_OUT = object()
#: "Holding nothing" (``None`` is the end of the stream, which can be held too).
NOTHING: Any = object()


async def _held(stage: Stage, waiting: Awaitable[Any], held: Chunk | None) -> None:
    """Await ``waiting`` while holding ``held``; on interruption give it back first."""
    try:
        await waiting
    except asyncio.CancelledError:
        if held is not NOTHING:
            stage.unget(held)
        raise


async def _forever() -> None:
    await asyncio.get_running_loop().create_future()


async def pipe_noop(stage: Stage, attrs: dict[str, int], rng: random.Random) -> None:
    while (chunk := await stage.get()) is not None:
        await stage.emit(chunk)
    stage.close()


async def pipe_latency(stage: Stage, attrs: dict[str, int], rng: random.Random) -> None:
    while (chunk := await stage.get()) is not None:
        # Relative to when the chunk was read, so chunks in flight overlap (throughput kept);
        # the timestamp moves on by what was slept, so a second latency toxic adds up.
        sleep = latency_delay(attrs["latency"], attrs["jitter"], rng) - (stage.now() - chunk.ts)
        due = stage.now() + sleep
        # Timers may fire up to a millisecond early (uvloop): wait until the chunk is due.
        while (left := due - stage.now()) > 0:
            await _held(stage, asyncio.sleep(left), chunk)
        chunk.ts += sleep
        await stage.emit(chunk)
    stage.close()


async def pipe_bandwidth(stage: Stage, attrs: dict[str, int], rng: random.Random) -> None:
    schedule = BandwidthSchedule(attrs["rate"])
    while (chunk := await stage.get()) is not None:
        if schedule.rate <= 0:
            # Toxiproxy loops on empty writes here: nothing passes, the connection stays open.
            await _held(stage, _forever(), chunk)
        data = chunk.data
        pieces, tail_wait = schedule.plan(len(data))
        for wait, size in pieces:
            await _held(stage, asyncio.sleep(wait), Chunk(data, chunk.ts))
            data, piece = data[size:], data[:size]
            await stage.emit(Chunk(piece, chunk.ts), rest=Chunk(data, chunk.ts) if data else NOTHING)
        tail = Chunk(data, chunk.ts)
        started = stage.now()
        await _held(stage, asyncio.sleep(tail_wait), tail)
        schedule.settle(stage.now() - started)
        await stage.emit(tail)
    stage.close()


async def pipe_slow_close(stage: Stage, attrs: dict[str, int], rng: random.Random) -> None:
    while (chunk := await stage.get()) is not None:
        await stage.emit(chunk)
    await _held(stage, asyncio.sleep(attrs["delay"] / 1000.0), None)  # holds the end of stream
    stage.close()


async def pipe_timeout(stage: Stage, attrs: dict[str, int], rng: random.Random) -> None:
    timeout = attrs["timeout"] / 1000.0 if attrs["timeout"] > 0 else None
    while True:
        # The timer restarts with every chunk: the close comes `timeout` after the last data.
        chunk = await stage.get(timeout)
        if chunk is None or chunk is TIMED_OUT:
            stage.close()
            return
        # Drop the data on the floor.


async def pipe_reset_peer(stage: Stage, attrs: dict[str, int], rng: random.Random) -> None:
    await stage.get()  # the first chunk (or the end of the stream) is dropped
    # Not interruptible, as in Toxiproxy: once triggered, the reset happens.
    await stage.reset_connection_after(attrs["timeout"] / 1000.0)


async def pipe_slicer(stage: Stage, attrs: dict[str, int], rng: random.Random) -> None:
    delay = attrs["delay"] / 1_000_000.0
    while (chunk := await stage.get()) is not None:
        data = chunk.data
        offsets = slice_offsets(0, len(data), attrs["average_size"], attrs["size_variation"], rng)
        for i in range(0, len(offsets), 2):
            lo, hi = offsets[i], offsets[i + 1]
            rest = Chunk(data[hi:], chunk.ts) if hi < len(data) else NOTHING
            await stage.emit(Chunk(data[lo:hi], chunk.ts), rest=rest)
            await _held(stage, asyncio.sleep(delay), rest)
    stage.close()


async def pipe_limit_data(stage: Stage, attrs: dict[str, int], rng: random.Random) -> None:
    limit = attrs["bytes"]
    state = stage.state
    state.setdefault("sent", 0)
    while (chunk := await stage.get()) is not None:
        remaining = max(limit - state["sent"], 0)
        if remaining < len(chunk.data):
            chunk = Chunk(chunk.data[:remaining], chunk.ts)
        if chunk.data:
            state["sent"] += len(chunk.data)  # counted before the emit: it is committed to go out
            await stage.emit(chunk)
        if limit - state["sent"] <= 0:
            break
    stage.close()


Pipe = Callable[[Stage, dict[str, int], random.Random], Awaitable[None]]

PIPES: dict[str, Pipe] = {
    "noop": pipe_noop,
    "latency": pipe_latency,
    "bandwidth": pipe_bandwidth,
    "slow_close": pipe_slow_close,
    "timeout": pipe_timeout,
    "reset_peer": pipe_reset_peer,
    "slicer": pipe_slicer,
    "limit_data": pipe_limit_data,
}

#: Types whose removal closes the connection (Toxiproxy's CleanupToxic).
CLOSES_ON_REMOVE = frozenset({"timeout"})
