"""What the built-in fault proxy costs when no toxic is set.

    .venv/bin/python benchmarks/fault_proxy.py --part redis [--requests 100000] [--clients 16]
    .venv/bin/python benchmarks/fault_proxy.py --part stack [--stack-rounds 2] [--users 20]
    .venv/bin/python benchmarks/fault_proxy.py --part all

Part ``redis``: a real redis-server, and our fault proxy (``python -m
agentverify.faults.server``) with one proxy in front of it and no toxic. redis-benchmark
(from the redis-tools / redis-server package) runs GETs directly and through the proxy,
alternating, ``--rounds`` times each; the medians are printed with the ratios. Targets:
throughput through the proxy >= 0.5x direct, and <= 0.3 ms added to the p50 latency.
Exit code 0 when both are met, 1 when one is missed, 2 on a missing tool or part.

Part ``stack``: the whole staging stack on the local backend, once with the fault proxy
in every path (clients -> nginx -> replicas -> Redis / Milvus / LLM) and once wired
directly (``stack.faults.enabled: false``), alternating ``--stack-rounds`` times; each
time the same unpaced Locust load (``--users`` users, 80% repeated questions) runs for
``--duration`` seconds through the load balancer. Target: chat requests/s with the proxy
>= 0.9x direct — the proxy must never be what limits a load rehearsal.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from agentverify.faults.client import ToxiproxyClient

TARGET_RATIO = 0.5
TARGET_ADDED_P50_MS = 0.3
TARGET_STACK_RATIO = 0.9


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"fault_proxy: {what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"fault_proxy: {what} did not listen on 127.0.0.1:{port} within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def redis_benchmark(port: int, requests: int, clients: int, size: int) -> dict[str, float]:
    out = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "get", "-n", str(requests),
                          "-c", str(clients), "-d", str(size), "--csv"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    row = next(r for r in csv.DictReader(io.StringIO(out)) if r["test"].startswith("GET"))
    return {"rps": float(row["rps"]), "p50_ms": float(row["p50_latency_ms"]),
            "p99_ms": float(row["p99_latency_ms"])}


def part_redis(args: argparse.Namespace) -> int:
    for tool, package in (("redis-server", "redis-server"), ("redis-benchmark", "redis-tools")):
        if shutil.which(tool) is None:
            print(f"fault_proxy: {tool} is needed: apt-get install {package}", file=sys.stderr)
            return 2
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="fault-bench-") as tmp:
        try:
            redis_port, api_port = free_port(), free_port()
            redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", tmp],
                                     stdout=subprocess.DEVNULL, cwd=tmp, start_new_session=True)
            procs.append(redis)
            server = subprocess.Popen([sys.executable, "-m", "agentverify.faults.server", "--host", "127.0.0.1",
                                       "--port", str(api_port), "--loop", args.loop],
                                      stdout=subprocess.DEVNULL, start_new_session=True)
            procs.append(server)
            wait_port(redis_port, redis, "redis-server")
            with ToxiproxyClient(f"http://127.0.0.1:{api_port}") as client:
                client.wait_ready(20)
                proxy = client.create_proxy("redis.bench", "127.0.0.1:0", f"127.0.0.1:{redis_port}")
            subprocess.run(["redis-cli", "-p", str(redis_port), "set", "key:__rand_int__", "x"],
                           capture_output=True, check=False)
            runs: dict[str, list[dict[str, float]]] = {"direct": [], "proxy": []}
            for _ in range(args.rounds):
                for name, port in (("direct", redis_port), ("proxy", proxy.port)):
                    runs[name].append(redis_benchmark(port, args.requests, args.clients, args.size))
        finally:
            for proc in reversed(procs):
                stop(proc)
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    ratio = medians["proxy"]["rps"] / medians["direct"]["rps"]
    added_p50 = medians["proxy"]["p50_ms"] - medians["direct"]["p50_ms"]
    added_p99 = medians["proxy"]["p99_ms"] - medians["direct"]["p99_ms"]
    report = {
        "part": "redis", "requests": args.requests, "clients": args.clients, "value_bytes": args.size,
        "rounds": args.rounds, "loop": args.loop,
        "direct": medians["direct"], "proxy": medians["proxy"],
        "throughput_ratio": round(ratio, 3), "added_p50_ms": round(added_p50, 3),
        "added_p99_ms": round(added_p99, 3),
        "targets": {"throughput_ratio": f">= {TARGET_RATIO}", "added_p50_ms": f"<= {TARGET_ADDED_P50_MS}"},
    }
    met = ratio >= TARGET_RATIO and added_p50 <= TARGET_ADDED_P50_MS
    report["met"] = met
    print(f"direct: {medians['direct']['rps']:.0f} GET/s, p50 {medians['direct']['p50_ms']:.3f} ms, "
          f"p99 {medians['direct']['p99_ms']:.3f} ms")
    print(f"proxy:  {medians['proxy']['rps']:.0f} GET/s, p50 {medians['proxy']['p50_ms']:.3f} ms, "
          f"p99 {medians['proxy']['p99_ms']:.3f} ms")
    print(f"ratio {ratio:.2f}x (target >= {TARGET_RATIO}), added p50 {added_p50:.3f} ms "
          f"(target <= {TARGET_ADDED_P50_MS}), added p99 {added_p99:.3f} ms: {'met' if met else 'MISSED'}")
    print(json.dumps(report))
    return 0 if met else 1


def _stack_rps(faults: bool, args: argparse.Namespace) -> dict[str, float]:
    """One stack up, one load through it, the stack down; its requests/s and p95."""
    import os
    from pathlib import Path

    from agentverify.load.driver import LoadDriver
    from agentverify.load.plan import LoadPlan
    from agentverify.scenarios.smoke import load_prompts
    from agentverify.session import AgentVerifySession

    repo = Path(__file__).resolve().parents[1]
    session = AgentVerifySession(env="staging", config_path=str(repo / "agentverify.yaml"),
                                 backend="local", say=lambda line: None,
                                 report_dir=tempfile.mkdtemp(prefix="av-bench-"),
                                 overrides={"stack.faults.enabled": faults},
                                 environ=dict(os.environ))
    try:
        with session.fresh_stack() as stack:
            plan = LoadPlan(host=stack.lb_url, users=args.users, spawn_rate=args.users,
                            duration_s=args.duration, repeat_ratio=0.8,
                            prompts=tuple(load_prompts(repo / "fixtures" / "prompts.jsonl")),
                            client_prefix="bench")
            result = LoadDriver(plan, say=lambda line: None, run=stack.run).run().result
            return {"rps": result.rps, "p95_ms": result.p95_ms,
                    "error_ratio": result.error_ratio}
    finally:
        session.close()


def part_stack(args: argparse.Namespace) -> int:
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(args.stack_rounds):
        for faults in (False, True):
            figures = _stack_rps(faults, args)
            runs[faults].append(figures)
            print(f"stack {'through the proxy' if faults else 'wired directly':<18} "
                  f"{figures['rps']:8.1f} req/s  p95 {figures['p95_ms']:6.1f} ms  "
                  f"errors {figures['error_ratio']:.4f}", flush=True)
    direct = statistics.median(r["rps"] for r in runs[False])
    proxied = statistics.median(r["rps"] for r in runs[True])
    ratio = proxied / direct if direct else 0.0
    met = ratio >= TARGET_STACK_RATIO
    print(f"stack: {proxied:.1f} req/s through the proxy vs {direct:.1f} direct: ratio "
          f"{ratio:.2f}x (target >= {TARGET_STACK_RATIO}): {'met' if met else 'MISSED'}")
    print(json.dumps({"part": "stack", "users": args.users, "duration_s": args.duration,
                      "direct": runs[False], "proxied": runs[True], "ratio": round(ratio, 3),
                      "target": TARGET_STACK_RATIO, "met": met}))
    return 0 if met else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("redis", "stack", "all"), default="all")
    parser.add_argument("--requests", type=int, default=100_000, help="GETs per redis-benchmark run")
    parser.add_argument("--clients", type=int, default=16, help="parallel connections")
    parser.add_argument("--size", type=int, default=64, help="value size in bytes")
    parser.add_argument("--rounds", type=int, default=3, help="direct/proxy alternations (medians reported)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the proxy's event loop")
    parser.add_argument("--stack-rounds", type=int, default=2, help="stack part: direct/proxy alternations")
    parser.add_argument("--users", type=int, default=20, help="stack part: Locust users (unpaced)")
    parser.add_argument("--duration", type=float, default=15.0, help="stack part: seconds of load each")
    args = parser.parse_args()
    code = 0
    if args.part in ("redis", "all"):
        code = part_redis(args)
    if args.part in ("stack", "all"):
        code = max(code, part_stack(args))
    return code


if __name__ == "__main__":
    sys.exit(main())
