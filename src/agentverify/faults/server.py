"""The built-in fault proxy: a drop-in ``toxiproxy-server`` (Toxiproxy 2.12.0's HTTP API) in asyncio.

Run it as::

    python -m agentverify.faults.server --host 127.0.0.1 --port 8474 [--config FILE] [--metrics]

Toxiproxy's own single-dash flags work too (``-host``, ``-port``, ``-config``,
``-proxy-metrics``, ``-runtime-metrics``, ``-seed``, ``-version``), so it can stand in
wherever ``toxiproxy-server`` is expected. ``--port 0`` picks a free port. One line is
printed on stdout once the API answers::

    toxiproxy 2.12.0 (agentverify built-in) API on http://127.0.0.1:8474

SIGTERM or SIGINT stops it cleanly: every proxy listener and connection is closed, then
the API, and the process exits 0. The event loop is uvloop's when it is importable.
``--config`` takes a ``/populate`` body (a JSON array of proxies), created at start; as
in Toxiproxy, a config that cannot be used is reported on one line and the server
carries on without it.

Example (in-process, e.g. from a test)::

    async def main():
        server = FaultProxyServer(host="127.0.0.1", port=0)
        await server.start()
        print(server.url)          # http://127.0.0.1:NNNNN
        await server.stop()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from agentverify.faults.api import VERSION, ProxyCollection, ToxiproxyAPI
from agentverify.faults.toxics import ApiError

__all__ = ["FaultProxyServer", "main", "parse_args"]

#: Flags Toxiproxy spells with one dash (Go's flag package); rewritten to argparse's two.
_GO_FLAGS = ("host", "port", "config", "seed", "version", "proxy-metrics", "runtime-metrics")


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our loop: signals are ours (uvicorn would re-raise them after shutdown)."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


class FaultProxyServer:
    """The API server and its proxies, in the running event loop.

    Args:
        host: address of the HTTP API (127.0.0.1 unless told otherwise).
        port: port of the HTTP API; 0 picks a free one (see :attr:`url` after ``start``).
        config: a populate-format JSON file to load at start.
        metrics: serve ``/metrics`` with the proxy byte counters.
        runtime_metrics: add process metrics to ``/metrics``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8474, *, config: str | None = None,
                 metrics: bool = False, runtime_metrics: bool = False):
        self.host = host
        self.port = port
        self.config = config
        self.collection = ProxyCollection()
        self.app = ToxiproxyAPI(self.collection, metrics=metrics, runtime_metrics=runtime_metrics)
        self._uvicorn: _EmbeddedUvicorn | None = None
        self._serving: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Load the config, bind the API and serve; returns once requests are answered."""
        if self.config:
            await self.load_config(self.config)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, lifespan="off", log_level="warning", access_log=False,
                                server_header=False, timeout_graceful_shutdown=5)
        self._uvicorn = _EmbeddedUvicorn(config)
        self._serving = asyncio.get_running_loop().create_task(self._uvicorn.serve(sockets=[sock]))
        while not self._uvicorn.started:
            if self._serving.done():
                self._serving.result()
                raise OSError(f"the API did not start on {self.url}")
            await asyncio.sleep(0.005)

    async def load_config(self, path: str) -> None:
        """Create the proxies of a populate-format file; problems are one line on stderr."""
        try:
            body = Path(path).read_bytes()
        except OSError as exc:
            print(f"toxiproxy config {path}: cannot read it: {exc.strerror}", file=sys.stderr, flush=True)
            return
        try:
            async with self.collection.lock:
                _, error = await self.collection.populate(body)
        except ApiError as exc:
            error = exc
        if error is not None:
            print(f"toxiproxy config {path}: {error.message} (expected a JSON array of "
                  f"{{name, listen, upstream, enabled}} objects)", file=sys.stderr, flush=True)

    async def stop(self) -> None:
        """Close every proxy and connection, then the API."""
        self.collection.clear()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._serving is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Our flags, with Toxiproxy's single-dash spellings accepted as well.

    Example:
        >>> parse_args(["-host", "127.0.0.1", "-port=0"]).port
        0
    """
    normalised = []
    for arg in argv:
        name = arg[1:].split("=", 1)[0]
        normalised.append("-" + arg if arg.startswith("-") and not arg.startswith("--") and name in _GO_FLAGS
                          else arg)
    parser = argparse.ArgumentParser(prog="python -m agentverify.faults.server",
                                     description="Toxiproxy-API fault proxy (built into agentverify).")
    parser.add_argument("--host", default="127.0.0.1", help="address of the HTTP API (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8474, help="port of the HTTP API; 0 picks one (default 8474)")
    parser.add_argument("--config", help="JSON file of proxies to create at start (populate format)")
    parser.add_argument("--metrics", "--proxy-metrics", dest="metrics", action="store_true",
                        help="serve /metrics with the proxies' byte counters")
    parser.add_argument("--runtime-metrics", action="store_true", help="add process metrics to /metrics")
    parser.add_argument("--seed", type=int, help="seed for the toxics' randomness (toxicity, jitter)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="event loop (default: uvloop when importable)")
    return parser.parse_args(normalised)


def _quiet_closed_writes(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """Drop the one expected error: a read forwarded straight to a socket closed a moment before.

    On the no-toxic fast path the reading socket writes into the other one directly; if
    that one was just closed by its peer, the write fails and the connection ends, which
    is what Toxiproxy does too. Anything else is reported as usual.
    """
    exc = context.get("exception")
    if isinstance(exc, RuntimeError) and "closed" in str(exc) and "data_received" in context.get("message", ""):
        return
    loop.default_exception_handler(context)


async def _serve(args: argparse.Namespace) -> int:
    server = FaultProxyServer(args.host, args.port, config=args.config, metrics=args.metrics,
                              runtime_metrics=args.runtime_metrics)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_closed_writes)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await server.start()
    except OSError as exc:
        print(f"toxiproxy: cannot listen on {server.url}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 1
    print(f"toxiproxy {VERSION} (agentverify built-in) API on {server.url}", flush=True)
    await stopping.wait()
    await server.stop()
    return 0


def _loop_factory(choice: str):
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("toxiproxy: --loop uvloop: uvloop is not installed (pip install uvloop)") \
                    from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m agentverify.faults.server``; returns the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.version:
        print(f"toxiproxy-server version {VERSION}")
        return 0
    if args.seed is not None:
        random.seed(args.seed)
    with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as runner:
        return runner.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
