"""The load child: runs Locust as a library and streams its figures as JSON lines.

This is the only module of agentverify that imports Locust, and it only ever runs as
its own process: Locust gevent-patches the whole process it is imported in (locust#2250),
which must never be the pytest or CLI process.

    python -m agentverify.load.child --plan PLAN.json --stream-fd FD --parent-pid PID [--wait-go]
    python -m agentverify.load.child --plan PLAN.json --worker --master-port PORT ...

The first form runs the load: a ``LocalRunner``, or with ``workers: N`` a
``MasterRunner`` on 127.0.0.1 (a free port) and N worker processes of the second form,
each a ``WorkerRunner``. It writes one JSON object per line to ``FD`` (see
:mod:`agentverify.load.stats`): a ``snapshot`` every ``interval_s``, then one
``result``, or an ``error``. With ``--wait-go`` the child gets ready (Locust loaded, its
workers connected) and starts the users only when the line ``go`` arrives on its stdin;
end of file instead ends it with nothing written. SIGTERM stops the users (each finishes
its request in flight), then the result is written. The driver starts this process in a process group
of its own, so it can stop it and its workers together; the child and each worker also
stop by themselves when their parent is gone.
"""

from __future__ import annotations

# Locust first: it monkey-patches the process, and only this process (see above).
import locust  # noqa: F401  isort: skip
import locust.runners  # isort: skip

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

import gevent
import gevent.select
from gevent.event import Event
from locust.env import Environment
from locust.stats import calculate_response_time_percentile, diff_response_time_dicts
from locust.util.load_locustfile import load_locustfile

from agentverify.load.plan import ClientCounters, LoadPlan
from agentverify.load.shapes import make_shape
from agentverify.load.users import COUNTERS, count_statuses, make_agent_user
from agentverify.stack.host import free_port

WORKERS_CONNECT_TIMEOUT_S = 30.0


class Stream:
    """JSON lines on the driver's pipe (line-buffered; one ``write`` per line)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def send(self, kind: str, **data: Any) -> None:
        try:
            self.out.write(json.dumps({"type": kind, **data}, default=str) + "\n")
            self.out.flush()
        except BrokenPipeError:  # the driver is gone; nobody to tell
            pass

    def info(self, message: str) -> None:
        self.send("info", message=message)


def _user_classes(plan: LoadPlan) -> tuple[list[Any], Any]:
    """User classes and shape: the plan's locustfile, or the built-in agent user."""
    if plan.locustfile:
        classes, shapes = load_locustfile(plan.locustfile)
        if not classes:
            raise RuntimeError(f"{plan.locustfile}: no User class in the locustfile")
        return list(classes.values()), (shapes[0] if shapes else make_shape(plan))
    return [make_agent_user(plan)], make_shape(plan)


def _percentile(response_times: dict[int, int], n: int, q: float) -> float:
    return float(calculate_response_time_percentile(response_times, n, q)) if n else 0.0


class _Figures:
    """Snapshots from Locust's aggregated stats (in the master: the workers' sum)."""

    def __init__(self, env: Environment, counters: ClientCounters) -> None:
        self.env = env
        self.counters = counters
        self.t0 = time.monotonic()
        self.prev_t = self.t0
        self.prev_requests = 0
        self.prev_times: dict[int, int] = {}
        self.peak_users = 0

    def snapshot(self) -> dict[str, Any]:
        total = self.env.stats.total
        now = time.monotonic()
        requests = total.num_requests
        timed = requests - total.num_none_requests
        times = dict(total.response_times)
        window = diff_response_time_dicts(times, self.prev_times)
        window_n = sum(window.values())
        users = self.env.runner.user_count if self.env.runner else 0
        self.peak_users = max(self.peak_users, users)
        snap = {
            "t": round(now - self.t0, 3),
            "users": users,
            "requests": requests,
            "failures": total.num_failures,
            "rps": round(requests / max(now - self.t0, 1e-9), 3),
            "interval_rps": round((requests - self.prev_requests) / max(now - self.prev_t, 1e-9),
                                  3),
            "p50_ms": _percentile(times, timed, 0.50),
            "p95_ms": _percentile(times, timed, 0.95),
            "p99_ms": _percentile(times, timed, 0.99),
            "interval_p95_ms": _percentile(window, window_n, 0.95) if window_n else None,
            "cache_hits": self.counters.cache_hits,
            "cache_misses": self.counters.cache_misses,
        }
        self.prev_t, self.prev_requests, self.prev_times = now, requests, times
        return snap

    def result(self, *, workers: int, stopped_by: str, stopped_at: float) -> dict[str, Any]:
        total = self.env.stats.total
        timed = total.num_requests - total.num_none_requests
        times = dict(total.response_times)
        # the load lasted from the start until the stop began (the graceful stop that
        # lets requests in flight finish is not load time)
        duration = max(stopped_at - self.t0, 1e-9)
        errors: dict[str, int] = {}
        for err in self.env.stats.errors.values():
            key = f"{err.method} {err.name}: {err.error}"
            errors[key] = errors.get(key, 0) + err.occurrences
        c = self.counters
        return {
            "requests": total.num_requests,
            "failures": total.num_failures,
            "duration_s": round(duration, 3),
            "rps": round(total.num_requests / duration, 3),
            "p50_ms": _percentile(times, timed, 0.50),
            "p95_ms": _percentile(times, timed, 0.95),
            "p99_ms": _percentile(times, timed, 0.99),
            "avg_ms": round(total.avg_response_time, 3),
            "max_ms": float(total.max_response_time or 0),
            "users": self.peak_users,
            "workers": workers,
            "status_codes": dict(c.status_codes),
            "errors": errors,
            "cache_hits": c.cache_hits,
            "cache_misses": c.cache_misses,
            "completion_tokens": c.completion_tokens,
            "max_completion_tokens": c.max_completion_tokens,
            "stopped_by": stopped_by,
        }


def _start_workers(plan_path: str, n: int, port: int) -> list[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-m", "agentverify.load.child", "--plan", plan_path, "--worker",
           "--master-port", str(port), "--parent-pid", str(os.getpid())]
    # workers stay in this process group: the driver stops the group as one
    return [subprocess.Popen(cmd, stdin=subprocess.DEVNULL) for _ in range(n)]


def _stop_workers(procs: list[subprocess.Popen[bytes]], timeout: float = 5.0) -> None:
    # By now the master has every worker's final figures (its stop waited for reports of
    # zero users), and a worker sleeps stop_timeout after a stop before it would read
    # the quit message: end them here instead of waiting for that.
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait_for_go(stop: Event, parent_pid: int) -> bool:
    """True once the line ``go`` is on stdin; False at its end, on a stop signal, or when
    the parent is gone. Waits cooperatively: the master's greenlets (its workers'
    heartbeats) go on meanwhile."""
    fd, line = sys.stdin.fileno(), b""
    while not stop.is_set() and os.getppid() == parent_pid:
        ready, _, _ = gevent.select.select([fd], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(fd, 64)
        if not chunk:
            return False
        line += chunk
        if b"\n" in line:
            return line.split(b"\n", 1)[0].strip() == b"go"
    return False


def run_load(plan: LoadPlan, plan_path: str, stream: Stream, parent_pid: int,
             wait_go: bool = False) -> int:
    """Run the plan's load and stream it; returns the exit code."""
    classes, shape = _user_classes(plan)
    env = Environment(user_classes=classes, shape_class=shape, host=plan.host,
                      stop_timeout=plan.stop_timeout_s)
    env.events.request.add_listener(count_statuses(COUNTERS))
    counters = COUNTERS
    workers: list[subprocess.Popen[bytes]] = []
    stop = Event()
    reason = {"by": ""}

    def on_signal() -> None:
        reason["by"] = reason["by"] or "signal"
        stop.set()

    gevent.signal_handler(signal.SIGTERM, on_signal)
    gevent.signal_handler(signal.SIGINT, on_signal)
    try:
        if plan.workers:
            port = free_port()
            runner: Any = env.create_master_runner("127.0.0.1", port)
            env.events.worker_report.add_listener(
                lambda client_id, data, **_: counters.merge(data.get("agentverify")))
            workers = _start_workers(plan_path, plan.workers, port)
            deadline = time.monotonic() + WORKERS_CONNECT_TIMEOUT_S
            while len(runner.clients.ready) < plan.workers:
                dead = [p.returncode for p in workers if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"a Locust worker exited with code {dead[0]} before "
                                       f"connecting (its output is in the load log)")
                if time.monotonic() > deadline or stop.is_set():
                    raise RuntimeError(f"only {len(runner.clients.ready)} of {plan.workers} "
                                       f"Locust workers connected within "
                                       f"{WORKERS_CONNECT_TIMEOUT_S:g}s")
                gevent.sleep(0.1)
            stream.info(f"{plan.workers} Locust workers connected to the master on "
                        f"127.0.0.1:{port}")
        else:
            runner = env.create_local_runner()
        if wait_go and not _wait_for_go(stop, parent_pid):
            return 0  # the driver closed without running the load: nothing to tell

        figures = _Figures(env, counters)
        runner.start_shape()
        shape_greenlet = runner.shape_greenlet
        figures.t0 = figures.prev_t = time.monotonic()
        hard_deadline = figures.t0 + plan.duration_s + max(10.0, plan.duration_s * 0.5)
        next_snapshot = figures.t0 + plan.interval_s
        while True:
            # look every 0.1 s whether the shape ended or a stop came; snapshot on the beat
            stop.wait(timeout=max(0.0, min(0.1, next_snapshot - time.monotonic())))
            if stop.is_set():
                break
            if shape_greenlet is None or shape_greenlet.dead:
                if shape_greenlet is not None and shape_greenlet.exception is not None:
                    raise RuntimeError(f"the load shape failed: {shape_greenlet.exception!r}")
                reason["by"] = "duration" if hasattr(shape, "ended_at") else "shape"
                break
            if time.monotonic() > hard_deadline:
                reason["by"] = "deadline"
                break
            if os.getppid() != parent_pid:
                reason["by"] = "orphaned"
                break
            if time.monotonic() >= next_snapshot:
                next_snapshot += plan.interval_s
                # once the shape has ended, the users are being stopped: no more figures
                if getattr(shape, "ended_at", None) is None:
                    stream.send("snapshot", **figures.snapshot())
        stopped_at = time.monotonic()
        if reason["by"] == "duration" and getattr(shape, "ended_at", None):
            stopped_at = min(stopped_at, shape.ended_at)
        runner.stop()  # users finish the request in flight (stop_timeout), then stop
        runner.quit()  # the master has every worker's final report; workers end below
        stream.send("result", **figures.result(workers=plan.workers, stopped_by=reason["by"],
                                               stopped_at=stopped_at))
        return 0
    finally:
        _stop_workers(workers)


def run_worker(plan: LoadPlan, port: int, parent_pid: int) -> int:
    """One Locust worker: runs the users the master dispatches to it."""
    # the master's snapshots are only as fresh as the workers' reports (Locust: 3 s)
    locust.runners.WORKER_REPORT_INTERVAL = plan.interval_s
    classes, _shape = _user_classes(plan)
    env = Environment(user_classes=classes, host=plan.host, stop_timeout=plan.stop_timeout_s)
    env.events.request.add_listener(count_statuses(COUNTERS))
    env.events.report_to_master.add_listener(
        lambda client_id, data, **_: data.__setitem__("agentverify", COUNTERS.drain()))
    runner = env.create_worker_runner("127.0.0.1", port)

    def watch_parent() -> None:
        while os.getppid() == parent_pid:
            gevent.sleep(1.0)
        runner.quit()

    gevent.spawn(watch_parent)
    runner.greenlet.join()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentverify.load.child")
    parser.add_argument("--plan", required=True)
    parser.add_argument("--stream-fd", type=int)
    parser.add_argument("--parent-pid", type=int, default=os.getppid())
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--master-port", type=int)
    parser.add_argument("--wait-go", action="store_true",
                        help="get ready, then start the users on a 'go' line on stdin")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    plan = LoadPlan.from_json(Path(args.plan).read_text(encoding="utf-8"))
    if args.worker:
        return run_worker(plan, args.master_port, args.parent_pid)
    stream = Stream(os.fdopen(args.stream_fd, "w", buffering=1, encoding="utf-8"))
    try:
        return run_load(plan, args.plan, stream, args.parent_pid, wait_go=args.wait_go)
    except Exception as exc:  # the boundary: one error line for the driver, trace in the log
        traceback.print_exc()
        stream.send("error", message=f"{type(exc).__name__}: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
