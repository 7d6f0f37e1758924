"""Where the bundled gate's time goes: configured waits, agent starts, stack start-ups, and
agentverify's own overhead (the remainder).

    .venv/bin/python benchmarks/gate.py                      # staging gate, backend auto
    .venv/bin/python benchmarks/gate.py --backend local -k smoke
    .venv/bin/python benchmarks/gate.py --journal reports/results.json   # an earlier run

It runs ``agentverify run --env staging`` (the bundled gate, scenarios/) in a child
process, then reads the run's journal (``results.json``):

* configured waits: every step's ``waits`` — load durations, bakes, faults held,
  steady-state baselines, deregistration delays, deliberate timeouts, a load's wait for a
  scrape after it (the scrape interval), an ``alert`` step's wait for its alert, a
  ``targets`` step's wait for Prometheus to discover and scrape changed targets, and a
  drill's waits on what its configuration times: the alert path (the rule's rate window
  and ``for``, scrape and evaluation intervals, Alertmanager's group_wait), the alert's
  resolution (the window again, group_interval) and the steady-state hold after the
  runbook and after the recovery (the hypothesis' window and ``hold_s``);
* stack start-ups: every stack brought up (the shared one, fresh ones) and its ``up_s``,
  less the work it did for a scenario while it came up (``prepared_s``: a restore);
* agent starts: agent instances started outside a stack's start-up (rollouts, scaling,
  restores of the baseline); their union on the clock is what the gate waited for them,
  beside their count x the agent's median cold start measured in the same run, and a
  bare FastAPI app's cold start measured here (what any Python agent costs at least);
* the remainder, wall - the three above: agentverify's own overhead (probes, reloads,
  Locust's start, reports, teardown, bookkeeping); also per scenario (its median and
  largest, and the largest ones by name), since the gate grows by scenarios.

The ratio wall / (waits + agent starts on the critical path) says how close the gate is
to costing no more than its own waits. Targets on a 2-core machine: remainder <= 20 s,
ratio <= 1.5. Exit code 0 when both are met, 1 when one is missed, 2 when the gate run
produced no journal, brought up no stack or passed no scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
TARGET_REMAINDER_S = 20.0
TARGET_RATIO = 1.5

BARE_APP = textwrap.dedent("""\
    from fastapi import FastAPI
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"ok": True}
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bare_app_cold_start(rounds: int = 3) -> float:
    """Median seconds from spawning uvicorn with a one-route FastAPI app to its first 200."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bare_app.py").write_text(BARE_APP)
        for _ in range(rounds):
            port = _free_port()
            t0 = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "bare_app:app", "--host",
                                     "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                                    cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                while time.monotonic() - t0 < 30:
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.02)
                times.append(time.monotonic() - t0)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    return statistics.median(times)


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def _clip(intervals: list[tuple[float, float]], a: float, b: float) -> list[tuple[float, float]]:
    return [(max(x, a), min(y, b)) for x, y in intervals if min(y, b) > max(x, a)]


def _remainders(journal: dict[str, Any], wall: float, ups: list[tuple[float, float]],
                agent_starts: list[tuple[float, float]],
                prepared: list[tuple[float, float]]) -> dict[str, float]:
    """The remainder of each scenario (its span less its waits, stack start-ups and agent
    starts; ``prepared``: ``(stack started, seconds)`` of work a start-up did for the
    scenario, which stays in its remainder), of the time between scenarios (baseline
    restores) and of what lies outside the journal (start-up, the dashboard capture,
    teardown, the HTML report)."""
    out: dict[str, float] = {}
    prev = journal["started_unix"]

    def add(name: str, a: float, b: float, waited: float) -> None:
        rest = (b - a) - waited - _union(_clip(ups, a, b)) - _union(_clip(agent_starts, a, b)) \
            + sum(seconds for t, seconds in prepared if a <= t < b)
        out[name] = round(out.get(name, 0.0) + rest, 1)

    for scenario in journal["scenarios"]:
        start = scenario.get("started") or prev
        end = scenario.get("ended") or start + (scenario.get("seconds") or 0.0)
        add("(between scenarios)", prev, start, 0.0)
        add(scenario["name"], start, end, sum(_waits(scenario).values()))
        prev = end
    span = (journal.get("ended_unix") or prev) - journal["started_unix"]
    add("(after the last scenario)", prev, journal.get("ended_unix") or prev, 0.0)
    out["(outside the journal: start-up, teardown, reports)"] = round(wall - span, 1)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _waits(scenario: dict[str, Any]) -> dict[str, float]:
    """Seconds a scenario's steps journaled as waits, by reason."""
    waits: dict[str, float] = {}
    for step in scenario.get("steps", []):
        for reason, seconds in (step.get("waits") or {}).items():
            waits[reason] = waits.get(reason, 0.0) + seconds
    return waits


def split(journal: dict[str, Any], wall: float) -> dict[str, Any]:
    """The wall time of a run, split as the module docstring says."""
    waits: dict[str, float] = {}
    for scenario in journal["scenarios"]:
        for reason, seconds in _waits(scenario).items():
            waits[reason] = waits.get(reason, 0.0) + seconds
    stacks = journal.get("stacks") or []
    ups = [(s["started"], s["started"] + s["up_s"]) for s in stacks]
    # work a stack-up did for a scenario (a restore the agents start on) is the
    # scenario's, not a start-up's: it stays in the remainder
    prepared = [(s["started"], s.get("prepared_s", 0.0)) for s in stacks]
    starts = [s for s in journal.get("starts") or [] if s["role"] == "agent" and s["ready"]]
    cold = [s["ready"] - s["started"] for s in starts]

    def in_an_up(s: dict[str, Any]) -> bool:
        return any(a - 0.5 <= s["started"] and s["ready"] <= b + 0.5 for a, b in ups)

    outside = [(s["started"], s["ready"]) for s in starts if not in_an_up(s)]
    agent_critical = _union(outside)
    waits_total = sum(waits.values())
    by_scenario = _remainders(journal, wall, ups, outside, prepared)
    own = [v for k, v in by_scenario.items() if not k.startswith("(")]
    stack_total = sum(s["up_s"] - s.get("prepared_s", 0.0) for s in stacks)
    remainder = wall - waits_total - stack_total - agent_critical
    ratio = wall / (waits_total + agent_critical) if waits_total + agent_critical else 0.0
    return {"wall_s": round(wall, 1), "waits_s": round(waits_total, 1),
            "waits_by_reason": {k: round(v, 1) for k, v in sorted(waits.items())},
            "stack_ups": len(stacks), "stack_up_s": round(stack_total, 1),
            "agent_starts": len(outside),
            "agent_cold_start_median_s": round(statistics.median(cold), 2) if cold else None,
            "agent_starts_critical_path_s": round(agent_critical, 1),
            "remainder_s": round(remainder, 1), "ratio": round(ratio, 2),
            "remainder_by_scenario": by_scenario,
            # the scenarios' own (between them, outside the journal: left out)
            "remainder_per_scenario_median_s": round(statistics.median(own), 2) if own else None,
            "remainder_per_scenario_max_s": max(own) if own else None,
            "scenarios": len(journal["scenarios"]),
            "passed": sum(1 for s in journal["scenarios"] if s["passed"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None, help="auto (default), local or docker")
    parser.add_argument("--env", default="staging")
    parser.add_argument("-k", dest="keyword", help="only scenarios matching this expression")
    parser.add_argument("--journal", help="read this results.json instead of running the gate "
                                          "(its wall time is the journal's own span)")
    args = parser.parse_args()

    bare = bare_app_cold_start()
    if args.journal:
        journal = json.loads(Path(args.journal).read_text())
        wall = (journal.get("ended_unix") or time.time()) - journal["started_unix"]
    else:
        report_dir = Path(tempfile.mkdtemp(prefix="agentverify-gate-"))
        argv = [sys.executable, "-m", "agentverify.cli", "run", "--env", args.env,
                "--report-dir", str(report_dir)]
        if args.backend:
            argv += ["--backend", args.backend]
        if args.keyword:
            argv += ["-k", args.keyword]
        t0 = time.monotonic()
        proc = subprocess.run(argv, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        wall = time.monotonic() - t0
        path = report_dir / "results.json"
        if not path.is_file():
            print(proc.stdout[-3000:])
            print(f"gate: the run wrote no journal ({path}); exit code {proc.returncode}")
            return 2
        journal = json.loads(path.read_text())
        print(f"gate run: exit code {proc.returncode}, journal {path}")
    figures = split(journal, wall)
    figures["bare_fastapi_cold_start_s"] = round(bare, 2)
    f = figures
    print(f"{f['passed']} of {f['scenarios']} scenarios passed on {journal['backend']}")
    print(f"wall                         {f['wall_s']:7.1f} s")
    print(f"  configured waits           {f['waits_s']:7.1f} s  {f['waits_by_reason']}")
    print(f"  stack start-ups            {f['stack_up_s']:7.1f} s  ({f['stack_ups']} stacks)")
    print(f"  agent starts (crit. path)  {f['agent_starts_critical_path_s']:7.1f} s  "
          f"({f['agent_starts']} starts; agent cold start {f['agent_cold_start_median_s']} s, "
          f"bare FastAPI {f['bare_fastapi_cold_start_s']} s)")
    print(f"  remainder (overhead)       {f['remainder_s']:7.1f} s  (target <= {TARGET_REMAINDER_S:g})")
    print(f"ratio wall / (waits + agent starts) {f['ratio']:.2f}  (target <= {TARGET_RATIO:g})")
    print(f"  per scenario: median {f['remainder_per_scenario_median_s']} s, largest "
          f"{f['remainder_per_scenario_max_s']} s ({f['scenarios']} scenarios)")
    print("largest remainders:")
    for name, seconds in list(f["remainder_by_scenario"].items())[:8]:
        print(f"  {seconds:7.1f} s  {name}")
    print(json.dumps(figures))
    if not f["stack_ups"] or not f["passed"]:
        # a gate that never got going measures nothing: its tiny figures are not a pass
        print("gate: no stack came up or no scenario passed; the figures measure nothing "
              "(see the run's output above the figures, or its journal)")
        return 2
    met = f["remainder_s"] <= TARGET_REMAINDER_S and f["ratio"] <= TARGET_RATIO
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
