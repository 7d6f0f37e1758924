"""Requests/s of agentverify's load driver vs the plain ``locust`` command.

Both run the same user class (a generated locustfile: a ``FastHttpUser`` that GETs
``/health`` back to back) against the same endpoint (a one-worker uvicorn FastAPI app
started here on 127.0.0.1), one after the other, in one run::

    .venv/bin/python benchmarks/load_driver.py                # 20 users, 10 s each
    .venv/bin/python benchmarks/load_driver.py --users 20 --duration 10 --workers 2

The driver side is :class:`agentverify.load.driver.LoadDriver` with ``locustfile`` set
(the child process, Locust as a library, JSON-lines stream); the plain side is
``locust -f FILE --headless -u N -r N -t Ns --host URL --csv PREFIX`` (``--processes N``
with workers), read from its ``_stats.csv``. Requests/s is requests / run time on both
sides. The ratio driver/plain near 1.0 means the driver's snapshots and stream cost
nothing measurable. The server is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from agentverify.load.driver import LoadDriver
from agentverify.load.plan import LoadPlan
from agentverify.stack.host import free_port
from agentverify.stack.runstate import terminate_group

APP = textwrap.dedent("""\
    from fastapi import FastAPI

    app = FastAPI()


    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}
""")

LOCUSTFILE = textwrap.dedent("""\
    from locust import FastHttpUser, constant, task


    class HealthUser(FastHttpUser):
        wait_time = constant(0)

        @task
        def health(self) -> None:
            self.client.get("/health")
""")


@contextlib.contextmanager
def serve(workdir: Path) -> Iterator[str]:
    """A one-worker uvicorn FastAPI ``/health`` app on 127.0.0.1; stopped on exit."""
    (workdir / "bench_app.py").write_text(APP)
    port = free_port()
    log = open(workdir / "uvicorn.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench_app:app", "--app-dir", str(workdir),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-access-log",
         "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"uvicorn did not start: {(workdir / 'uvicorn.log').read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        terminate_group(proc, grace=10)
        log.close()


def run_driver(url: str, locustfile: Path, users: int, duration: float,
               workers: int) -> tuple[float, float, int]:
    plan = LoadPlan(host=url, users=users, spawn_rate=float(users), duration_s=duration,
                    locustfile=str(locustfile), workers=workers)
    run = LoadDriver(plan, say=lambda line: None).run()
    return run.result.requests / duration, run.result.p95_ms, run.result.requests


def run_plain(url: str, locustfile: Path, users: int, duration: float, workers: int,
              workdir: Path) -> tuple[float, float, int, float]:
    prefix = workdir / "plain"
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
           "-u", str(users), "-r", str(users), "-t", f"{duration:g}s", "--host", url,
           "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING"]
    if workers:
        cmd += ["--processes", str(workers)]
    with open(workdir / "plain.log", "wb") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=duration + 120,
                              check=False, start_new_session=True)
    if proc.returncode not in (0, 1):  # 1: some requests failed; still figures
        raise SystemExit(f"locust exited {proc.returncode}: "
                         f"{(workdir / 'plain.log').read_text()[-2000:]}")
    with open(f"{prefix}_stats.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    # Locust's own "Requests/s" divides by first-to-last request of its stats window
    # (about 1 s short of -t here), the driver by the run time: compare like with like
    count = int(row["Request Count"])
    return count / duration, float(row["95%"]), count, float(row["Requests/s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per side")
    parser.add_argument("--workers", type=int, default=0,
                        help="Locust worker processes on both sides (0: one process)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds, in ABBA order so drift on a shared machine cancels")
    args = parser.parse_args(argv)
    figures: dict[str, list[tuple[float, float, int]]] = {"driver": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="agentverify-bench-") as tmp:
        workdir = Path(tmp)
        locustfile = workdir / "bench_locustfile.py"
        locustfile.write_text(LOCUSTFILE)
        with serve(workdir) as url:
            print(f"target: one-worker uvicorn FastAPI GET /health at {url}; {args.users} users, "
                  f"{args.duration:g}s per run, workers {args.workers}, {args.rounds} round(s)")
            for n in range(args.rounds):
                order = ("driver", "plain") if n % 2 == 0 else ("plain", "driver")
                for side in order:
                    note = ""
                    if side == "driver":
                        got = run_driver(url, locustfile, args.users, args.duration,
                                         args.workers)
                    else:
                        *fig, own = run_plain(url, locustfile, args.users, args.duration,
                                              args.workers, workdir)
                        got = (fig[0], fig[1], fig[2])
                        note = f"  (its own Requests/s column: {own:.1f})"
                    figures[side].append(got)
                    print(f"  round {n + 1} {side:6}: {got[0]:8.1f} requests/s  p95 "
                          f"{got[1]:.0f} ms  ({got[2]:,} requests){note}")
    rps = {side: statistics.median(r for r, _, _ in runs) for side, runs in figures.items()}
    p95 = {side: statistics.median(p for _, p, _ in runs) for side, runs in figures.items()}
    print(f"agentverify load driver: {rps['driver']:8.1f} requests/s  p95 {p95['driver']:.0f} ms"
          f"  (median of {args.rounds})")
    print(f"plain locust command:    {rps['plain']:8.1f} requests/s  p95 {p95['plain']:.0f} ms"
          f"  (median of {args.rounds})")
    print(f"ratio driver/plain: {rps['driver'] / rps['plain']:.2f}" if rps["plain"]
          else "ratio: the plain run measured 0 requests/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
