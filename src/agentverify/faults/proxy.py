"""The proxying itself: proxies, their connections, and the toxic chain on each direction.

A :class:`Proxy` listens on one address and, per accepted client, dials its upstream and
joins the two sockets with two :class:`Link` objects (``upstream``: client -> server,
``downstream``: server -> client). Everything is asyncio Protocols and transports:

* With no toxic on a direction, bytes go from ``data_received`` straight into the other
  transport's ``write``, and the reading side is paused while the writing side's buffer
  is above its high-water mark (resumed below the low one). That is the whole fast path.
* With toxics, each toxic runs as one task on a :class:`_Stage` with a small input queue
  (Toxiproxy's channel sizes); a stage emits into the next stage or into the socket.
  Adding, updating or removing a toxic rewires the stages of every live link; an
  interrupted toxic hands back what it held, so the byte stream stays whole and in order.

As in Toxiproxy, the end of one side's stream closes the other side after the toxics
have passed what was in flight (no half-close), a disabled proxy closes its listener and
every connection, and an upstream that cannot be reached means: accept, then close.

Example:
    >>> import asyncio
    >>> async def demo():
    ...     p = Proxy("redis", "127.0.0.1:0", "127.0.0.1:6379")
    ...     await p.start()
    ...     shown = p.listen
    ...     p.stop()
    ...     return shown.startswith("127.0.0.1:") and shown != "127.0.0.1:0"
    >>> asyncio.run(demo())
    True
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import socket
import struct
import time
from typing import Any

from agentverify.faults._addr import AddrError, ResolvedAddr, bind_listener, resolve, split_host_port
from agentverify.faults.toxics import (
    CLOSES_ON_REMOVE,
    DIRECTIONS,
    DOWNSTREAM,
    NOTHING,
    PIPES,
    TIMED_OUT,
    UPSTREAM,
    ApiError,
    Chunk,
    ToxicSpec,
    pipe_noop,
)

__all__ = ["Proxy", "ProxyAlreadyStarted", "WRITE_HIGH_WATER", "WRITE_LOW_WATER"]

#: Write-buffer marks per socket: above HIGH the other side stops reading, below LOW it
#: reads again. 1 MiB kept a Redis GET benchmark at the direct figure without letting a
#: slow reader pile up memory.
WRITE_HIGH_WATER = 1024 * 1024
WRITE_LOW_WATER = 256 * 1024
_LINGER_ZERO = struct.pack("ii", 1, 0)


class ProxyAlreadyStarted(Exception):
    """``start()`` on a proxy that is already listening (ignored by ``/reset``)."""


class _Side(asyncio.Protocol):
    """One socket of a proxied connection (the client's or the upstream's)."""

    def __init__(self, conn: _Connection, role: str):
        self.conn = conn
        self.role = role
        self.transport: asyncio.Transport | None = None
        self.out_link: Link | None = None  # the link reading from this socket
        self.in_link: Link | None = None  # the link writing to this socket
        self.pauses: set[str] = set()
        self.write_paused = False
        self.lost = False
        self._writable: list[asyncio.Future[None]] = []
        # Bytes (and the end of stream, as None) that came before the links were wired:
        # uvloop starts reading right after connection_made, whatever was paused in it.
        self.early: list[bytes | None] = []

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop: not an asyncio.Transport subclass
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.conn.side_made(self)

    def data_received(self, data: bytes) -> None:
        link = self.out_link
        if link is not None:
            link.feed(data)
        else:
            self.early.append(data)
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        # Keep the transport open for writing: what is in flight the other way still goes out.
        if self.out_link is not None:
            self.out_link.feed_eof()
        else:
            self.early.append(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.in_link is not None:
            self.in_link.unbind_fast()
        if self.out_link is not None:
            self.out_link.unbind_fast()
        self._wake_writers()
        if self.out_link is not None:
            self.out_link.feed_eof()
        self.conn.side_lost(self)

    def attach(self, link: Link) -> None:
        """Become ``link``'s source, replaying what was read before it existed."""
        self.out_link = link
        early, self.early = self.early, []
        for item in early:
            link.feed(item) if item is not None else link.feed_eof()

    def pause_writing(self) -> None:
        self.write_paused = True
        link = self.in_link
        if link is not None and not link.stages:
            link.source.pause("dest")

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writers()
        if self.in_link is not None:
            self.in_link.source.resume("dest")

    # flow control
    def pause(self, reason: str) -> None:
        if not self.pauses and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.pauses.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self.pauses:
            self.pauses.discard(reason)
            if not self.pauses and self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    async def writable(self) -> None:
        while self.write_paused and not self.lost:
            fut = asyncio.get_running_loop().create_future()
            self._writable.append(fut)
            await fut

    def _wake_writers(self) -> None:
        waiters, self._writable = self._writable, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def write(self, data: bytes) -> None:
        if not self.lost and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.in_link is not None:
            self.in_link.unbind_fast()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self, *, rst: bool = False) -> None:
        if self.in_link is not None:
            self.in_link.unbind_fast()
        if self.transport is None or self.lost:
            return
        if rst:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self.transport.abort()


class _Stage:
    """One toxic running on one link: its input queue, its task, its per-connection state."""

    def __init__(self, link: Link, spec: ToxicSpec):
        self.link = link
        self.spec = spec
        self.queue: collections.deque[Chunk | None] = collections.deque()
        self.capacity = max(spec.buffer_size, 1)
        self.ready: list[Chunk] = []  # processed chunks an interruption caught before they left
        self.state: dict[str, Any] = {}
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[Any] | None = None
        self._space: list[asyncio.Future[None]] = []

    # -- what a toxic sees (toxics.Stage)
    def now(self) -> float:
        # Not loop.time(): uvloop's clock is in whole milliseconds, cached per iteration.
        return time.monotonic()

    async def get(self, timeout: float | None = None) -> Any:
        while not self.queue:
            loop = self.link.loop
            fut = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _set_if_pending, fut, TIMED_OUT) if timeout else None
            try:
                if await fut is TIMED_OUT:
                    return TIMED_OUT
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        item = self.queue.popleft()
        self._made_space()
        return item

    async def emit(self, chunk: Chunk, rest: Chunk | None = NOTHING) -> None:
        try:
            await self.link.deliver(self, chunk)
        except asyncio.CancelledError:
            self.ready.append(chunk)
            if rest is not NOTHING:
                self.unget(rest)
            raise

    def unget(self, item: Chunk | None) -> None:
        self.queue.appendleft(item)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.link.push_after(self, [None])

    async def reset_connection_after(self, seconds: float) -> None:
        # Shielded: removing the toxic does not call the reset off, as in Toxiproxy.
        await asyncio.shield(self.link.conn.reset_after(seconds))

    # -- plumbing
    def put(self, item: Chunk | None) -> None:
        self.queue.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def has_space(self) -> bool:
        return len(self.queue) < self.capacity

    async def wait_space(self) -> None:
        fut = self.link.loop.create_future()
        self._space.append(fut)
        await fut

    def _made_space(self) -> None:
        waiters, self._space = self._space, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        link = self.link
        if link.stages and link.stages[0] is self and self.has_space():
            link.source.resume("chain")

    def start(self) -> None:
        self.task = self.link.loop.create_task(self._run())

    async def _run(self) -> None:
        while self.ready:
            await self.link.deliver(self, self.ready[0])
            self.ready.pop(0)
        # Toxicity is rolled each time the toxic starts on this link (link start, update).
        toxic = self.link.rng.random() < self.spec.toxicity
        pipe = PIPES[self.spec.type] if toxic else pipe_noop
        await pipe(self, self.spec.attributes, self.link.rng)

    async def interrupt(self) -> None:
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake_producers(self) -> None:
        self._made_space()


def _set_if_pending(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


class Link:
    """One direction of a proxied connection: source socket -> toxics -> destination socket."""

    def __init__(self, conn: _Connection, direction: int, source: _Side, dest: _Side, chain: list[ToxicSpec]):
        self.conn = conn
        self.loop = conn.loop
        self.rng = conn.proxy.rng
        self.direction = direction
        self.source = source
        self.dest = dest
        self.stages: list[_Stage] = []
        self.eof = False
        self.sink_closed = False
        self.received = 0  # bytes read from the source
        self.sent = 0  # bytes written to the destination
        self.fast = False
        dest.in_link = self
        for spec in chain:
            self._append(spec)
        source.attach(self)
        self.bind_fast()

    def bind_fast(self) -> None:
        """No toxic and no byte counting: let the source's reads call the destination's write directly.

        The protocol's ``data_received`` becomes the destination transport's bound ``write``
        (``set_protocol`` makes uvloop pick it up), so a proxied chunk costs no Python frame.
        Measured on redis-benchmark GETs: see benchmarks/fault_proxy.py.
        """
        source, dest = self.source, self.dest
        if (self.fast or self.stages or self.sink_closed or self.conn.proxy.count_bytes or source.lost
                or dest.lost or dest.transport is None or dest.transport.is_closing()):
            return
        self.fast = True
        source.data_received = dest.transport.write  # type: ignore[method-assign]
        source.transport.set_protocol(source)

    def unbind_fast(self) -> None:
        if self.fast:
            self.fast = False
            del self.source.data_received
            if self.source.transport is not None:
                self.source.transport.set_protocol(self.source)

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.stages:
            first = self.stages[0]
            if first.closed:
                return
            first.put(Chunk(data, time.monotonic()))
            if not first.has_space():
                self.source.pause("chain")
        elif not self.sink_closed:
            # The fast path: no toxic on this direction.
            transport = self.dest.transport
            if not transport.is_closing():
                self.sent += len(data)
                transport.write(data)

    def feed_eof(self) -> None:
        if self.eof:
            return
        self.eof = True
        if self.stages:
            if not self.stages[0].closed:
                self.stages[0].put(None)
        else:
            self._sink_nowait(None)

    def _next(self, stage: _Stage) -> _Stage | None:
        i = self.stages.index(stage) + 1
        return self.stages[i] if i < len(self.stages) else None

    async def deliver(self, stage: _Stage, item: Chunk | None) -> None:
        """Hand ``item`` to whatever follows ``stage`` now, waiting while that is full."""
        while True:
            nxt = self._next(stage) if stage in self.stages else None
            if nxt is None:
                await self.dest.writable()
                self._sink_nowait(item)
                return
            if nxt.closed:
                return
            if item is None or nxt.has_space():
                nxt.put(item)
                return
            await nxt.wait_space()

    def push_after(self, stage: _Stage, items: list[Chunk | None]) -> None:
        """Put ``items`` after ``stage`` at once, ignoring capacity (end of stream, rewiring)."""
        nxt = self._next(stage) if stage in self.stages else None
        for item in items:
            if nxt is None:
                self._sink_nowait(item)
            elif not nxt.closed:
                nxt.put(item)

    def _sink_nowait(self, item: Chunk | None) -> None:
        if self.sink_closed:
            return
        if item is None:
            self.sink_closed = True
            self.unbind_fast()
            self.dest.close()
        elif item.data:
            self.sent += len(item.data)
            self.dest.write(item.data)

    # -- rewiring
    def _append(self, spec: ToxicSpec) -> _Stage:
        stage = _Stage(self, spec)
        self.stages.append(stage)
        stage.start()
        return stage

    def add(self, spec: ToxicSpec) -> None:
        self.unbind_fast()
        self._append(spec)

    async def update(self, spec: ToxicSpec) -> None:
        for stage in self.stages:
            if stage.spec is spec and not stage.closed:
                await stage.interrupt()
                if not stage.closed:
                    stage.start()

    async def remove(self, spec: ToxicSpec) -> None:
        stage = next((s for s in self.stages if s.spec is spec), None)
        if stage is None:
            return
        await stage.interrupt()
        if spec.type in CLOSES_ON_REMOVE and not stage.closed:
            # Toxiproxy's timeout toxic closes its stub when removed: the connection ends.
            stage.close()
        carried: list[Chunk | None] = [] if stage.closed else [*stage.ready, *stage.queue]
        self.push_after(stage, carried)
        index = self.stages.index(stage)
        self.stages.remove(stage)
        stage.wake_producers()
        if index == 0:
            first = self.stages[0] if self.stages else None
            if first is None or first.has_space():
                self.source.resume("chain")
        if not self.stages and self.dest.write_paused:
            self.source.pause("dest")
        self.bind_fast()

    def cancel(self) -> None:
        for stage in self.stages:
            if stage.task is not None:
                stage.task.cancel()


class _Connection:
    """A client socket, its upstream socket and the two links between them."""

    def __init__(self, proxy: Proxy):
        self.proxy = proxy
        self.loop = proxy.loop
        self.client = _Side(self, "client")
        self.upstream: _Side | None = None
        self.links: list[Link] = []
        self._dial: asyncio.Task[None] | None = None
        self._reset: asyncio.Future[None] | None = None
        self.done = False

    def side_made(self, side: _Side) -> None:
        if side is self.client:
            side.pause("dial")
            self.proxy.connections.add(self)
            self._dial = self.loop.create_task(self._connect())
        else:
            # Wired here, before the upstream socket can deliver its first bytes.
            self.links = [Link(self, UPSTREAM, self.client, side, self.proxy.chain[UPSTREAM]),
                          Link(self, DOWNSTREAM, side, self.client, self.proxy.chain[DOWNSTREAM])]

    async def _connect(self) -> None:
        try:
            host, port = split_host_port(self.proxy.upstream)
            self.upstream = _Side(self, "upstream")
            await self.loop.create_connection(lambda: self.upstream, host or "localhost", int(port or 0))
        except (OSError, ValueError):
            # Toxiproxy accepts, fails to dial, and closes the client: the client reads EOF.
            self.upstream = None
            self.client.close()
            return
        if self.client.lost:
            self.upstream.abort()
            return
        self.client.resume("dial")

    def side_lost(self, side: _Side) -> None:
        if side is self.client and self._dial is not None and not self._dial.done():
            self._dial.cancel()
            self._finish()
            return
        up = self.upstream
        if self.client.lost and (up is None or up.transport is None or up.lost):
            self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        for link in self.links:
            link.cancel()
            self.proxy.account(link)
        if self._dial is not None and not self._dial.done():
            self._dial.cancel()
        self.proxy.connections.discard(self)

    def abort(self) -> None:
        """Close both sockets now (the proxy was disabled or deleted)."""
        if self._dial is not None and not self._dial.done():
            self._dial.cancel()
        self.client.abort()
        if self.upstream is not None:
            self.upstream.abort()
        for link in self.links:
            link.cancel()
        if self.client.lost and (self.upstream is None or self.upstream.transport is None):
            self._finish()

    def reset_after(self, seconds: float) -> asyncio.Future[None]:
        if self._reset is None:
            self._reset = self.loop.create_future()
            self.loop.call_later(max(seconds, 0.0), self._do_reset)
        return self._reset

    def _do_reset(self) -> None:
        # SO_LINGER 0 then close: both peers get a TCP RST (ECONNRESET), unsent data dropped.
        self.client.abort(rst=True)
        if self.upstream is not None:
            self.upstream.abort(rst=True)
        if self._reset is not None and not self._reset.done():
            self._reset.set_result(None)


class Proxy:
    """One Toxiproxy proxy: a name, a listen address, an upstream and two toxic chains.

    ``listen`` is what the API shows: as given until the proxy first listens, then the
    address it is bound to. Methods raise :class:`ApiError` with Toxiproxy's messages.
    """

    def __init__(self, name: str, listen: str, upstream: str, *, rng: random.Random | None = None,
                 count_bytes: bool = False):
        self.name = name
        self.count_bytes = count_bytes  # only for /metrics: counting keeps every chunk in Python
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.chain: tuple[list[ToxicSpec], list[ToxicSpec]] = ([], [])
        self.connections: set[_Connection] = set()
        self.rng = rng or random.Random(random.getrandbits(64))  # --seed reaches every proxy
        self.bytes: dict[tuple[str, str, str, str, str], int] = {}
        self._server: asyncio.base_events.Server | None = None
        self.loop = asyncio.get_running_loop()

    def to_json(self) -> dict[str, Any]:
        """Toxiproxy's proxy JSON (``Logger`` is an empty object in 2.12.0's output too)."""
        return {"name": self.name, "listen": self.listen, "upstream": self.upstream,
                "enabled": self.enabled, "Logger": {}, "toxics": [t.to_json() for t in self.toxics()]}

    def toxics(self) -> list[ToxicSpec]:
        return [*self.chain[UPSTREAM], *self.chain[DOWNSTREAM]]

    def account(self, link: Link) -> None:
        """Fold a finished link's byte counts into the proxy's totals (for ``/metrics``)."""
        for kind, n in (("received", link.received), ("sent", link.sent)):
            key = (kind, DIRECTIONS[link.direction], self.name, self.listen, self.upstream)
            self.bytes[key] = self.bytes.get(key, 0) + n

    def byte_counts(self) -> dict[tuple[str, str, str, str, str], int]:
        """``(kind, direction, proxy, listener, upstream) -> bytes``, live connections included."""
        totals = dict(self.bytes)
        for conn in self.connections:
            for link in conn.links:
                for kind, n in (("received", link.received), ("sent", link.sent)):
                    key = (kind, DIRECTIONS[link.direction], self.name, self.listen, self.upstream)
                    totals[key] = totals.get(key, 0) + n
        return totals

    # -- lifecycle
    async def start(self) -> None:
        """Listen (``enabled`` becomes true) or raise ``ApiError`` 500 with Go's listen error."""
        if self.enabled:
            raise ProxyAlreadyStarted(self.name)
        try:
            addr = await resolve(self.listen)
        except AddrError as exc:
            raise ApiError(f"listen tcp: {exc}", 500) from None
        try:
            sock, shown = bind_listener(addr)
        except AddrError as exc:
            raise ApiError(f"listen tcp {addr}: {exc}", 500) from None
        self._server = await self.loop.create_server(lambda: _Connection(self).client, sock=sock)
        self.listen = shown
        self.enabled = True

    def stop(self) -> None:
        """Close the listener and every live connection; the toxics stay."""
        if not self.enabled:
            return
        self.enabled = False
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self.connections):
            conn.abort()

    async def differs(self, listen: str, upstream: str) -> bool:
        """Toxiproxy's ``Differs``: shown listen vs the *resolved* new one, or another upstream."""
        try:
            resolved: ResolvedAddr = await resolve(listen)
        except AddrError as exc:
            raise ApiError(str(exc), 500) from None
        return self.listen != str(resolved) or self.upstream != upstream

    async def update(self, listen: str, upstream: str, enabled: bool) -> None:
        """``PATCH /proxies/{p}``: a new listen/upstream restarts it; ``enabled`` starts/stops."""
        if await self.differs(listen, upstream):
            self.stop()
            self.listen, self.upstream = listen, upstream
        if enabled != self.enabled:
            if enabled:
                await self.start()
            else:
                self.stop()

    # -- toxics
    def find_toxic(self, name: str) -> ToxicSpec | None:
        return next((t for t in self.toxics() if t.name == name), None)

    def _links(self, direction: int) -> list[Link]:
        return [c.links[direction] for c in self.connections if len(c.links) == 2]

    def add_toxic(self, spec: ToxicSpec) -> None:
        self.chain[spec.direction].append(spec)
        for link in self._links(spec.direction):
            link.add(spec)

    async def update_toxic(self, spec: ToxicSpec, toxicity: float, attributes: dict[str, int]) -> None:
        spec.toxicity, spec.attributes = toxicity, attributes
        await asyncio.gather(*(link.update(spec) for link in self._links(spec.direction)))

    async def remove_toxic(self, spec: ToxicSpec) -> None:
        self.chain[spec.direction].remove(spec)
        await asyncio.gather(*(link.remove(spec) for link in self._links(spec.direction)))

    async def reset_toxics(self) -> None:
        for spec in self.toxics():
            await self.remove_toxic(spec)
