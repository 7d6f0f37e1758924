"""A real run's report, opened in headless Chromium as the people reading it would.

``agentverify run`` (a subprocess, as in CI) runs the shipped smoke scenario and one
that fails on purpose (the agent answers 200, the gate wants 201) on a real local stack;
the run's own journal is then re-rendered with ``agentverify report`` and the page is
loaded in Debian's Chromium, driven by Playwright (never its own browser download):
no console error, no request but the file itself, four dashboard panels with drawn
data, the failing gate first in the header. A screenshot is left in the test's report
directory and in the repository's ``reports/results.png`` for people to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentverify.stack.runstate import terminate_group
from tests.integration.conftest import CONFIG, REPO, require_local_binaries
from tests.integration.helpers import leftovers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
# Playwright adds --headless and its own --user-data-dir (a temporary profile); without the
# background-networking flags Chromium tries to reach the internet at start
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
FAILING = """\
# Fails on purpose: the agent answers 200, the gate wants 201.
name: always-red
description: a gate that cannot pass, under a steady probe, a scale and a short load
steps:
  - probe_start: {rps: 10}
  - chat: {message: "How do I reset my password?"}
  - scale: {replicas: 2}
  - load: {users: 4, spawn_rate: 8, user_rps: 5, duration_s: 8, repeat_ratio: 0.5}
  - probe_stop: {}
expect:
  chat_status: "== 201"
  failed_requests: "== 0"
  p95_ms: "<= 1000"
"""
FIRST_FAILURE = "always-red › chat_status: measured 200, threshold == 201"
#: the run takes about 35 s on a 2-core machine; the rest is room for a busy one
RUN_TIMEOUT_S = 600


def require_chromium() -> Any:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium "
                    "(scripts/bootstrap installs it)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: pip install -e '.[dev]'", pytrace=False)
    return sync_playwright


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real run of smoke + always-red on the local backend, and what it wrote."""
    require_local_binaries()
    work = tmp_path_factory.mktemp("report-run")
    scenarios = work / "scenarios"
    scenarios.mkdir()
    shutil.copy(REPO / "scenarios" / "smoke.yaml", scenarios / "smoke.yaml")
    (scenarios / "always_red.yaml").write_text(FAILING)
    report_dir = work / "reports"
    env = dict(os.environ, AGENTVERIFY_STATE_DIR=str(work / "state"))
    argv = [sys.executable, "-m", "agentverify.cli", "run", "--backend", "local", "--env",
            "staging", "--config", str(CONFIG), "--report-dir", str(report_dir),
            "-k", "smoke or always-red", str(scenarios)]
    proc = subprocess.Popen(argv, cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        terminate_group(proc, sig=signal.SIGINT, grace=120)  # Ctrl-C, then SIGKILL
        subprocess.run([sys.executable, "-m", "agentverify.cli", "reap"], env=env,
                       capture_output=True, timeout=300, check=False)
    yield {"code": proc.returncode, "out": out, "reports": report_dir, "work": work}


def test_the_run_fails_on_the_gate_and_journals_what_the_report_draws(
        real_run: dict[str, Any]) -> None:
    out = real_run["out"]
    assert real_run["code"] == 1, out  # a gate failed
    assert f"1 of 2 scenarios passed; first failing gate: {FIRST_FAILURE}" in out, out
    data = json.loads((real_run["reports"] / "results.json").read_text())
    stack = json.loads((real_run["reports"] / "stack.json").read_text())
    assert leftovers(stack["run_id"], stack["run_dir"]) == []
    by_name = {s["name"]: s for s in data["scenarios"]}
    assert by_name["smoke"]["passed"] is True and by_name["always-red"]["passed"] is False
    red = by_name["always-red"]
    assert red["started"] < red["ended"] and all(st["started"] for st in red["steps"])
    assert {"agent-0", "lb"} <= set(red["logs"]) and by_name["smoke"]["logs"] == {}
    assert red["series"]["probe latency ms"]["unit"] == "ms"
    assert red["series"]["p95_ms"]["threshold"] == 1000  # the staging SLO
    kinds = {(e["kind"], e["label"]) for e in data["timeline"]}
    assert {("scenario", "smoke"), ("scenario", "always-red"), ("rollout", "scale 2")} <= kinds
    assert data["panels_error"] is None
    assert list(data["panels"]) == ["Request Rate", "Latency", "Error Rate", "Token Usage"]
    assert [p["unit"] for p in data["panels"].values()] == ["req/s", "ms", "errors/s",
                                                            "tokens/s"]
    chat = next(s for s in data["panels"]["Request Rate"]["series"]
                if s["labels"].get("type") == "chat")
    # the probe (10/s) and the load (4 users at 5/s) overlap: the rate window is sized to
    # the run, so the panel reads tens of requests per second, not a fifth of it
    assert max(v for _t, v in chat["points"] if v is not None) > 10
    assert "[5m]" in data["panels"]["Request Rate"]["expr"]
    assert "[10s]" in data["panels"]["Request Rate"]["query"]
    junit = (real_run["reports"] / "junit.xml").read_text()
    assert junit.count("<testcase ") == 2
    assert 'name="gate.chat_status" value="200|== 201|fail"' in junit


def test_the_report_of_the_real_run_in_chromium(real_run: dict[str, Any], tmp_path: Path) -> None:
    sync_playwright = require_chromium()
    reports = real_run["reports"]
    rendered = tmp_path / "rendered"
    proc = subprocess.run([sys.executable, "-m", "agentverify.cli", "report",
                           str(reports / "results.json"), "--out", str(rendered)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"first failing gate: {FIRST_FAILURE}" in proc.stdout
    page_file = rendered / "results.html"
    # re-rendering the saved journal is exact: the same page the run wrote
    assert page_file.read_bytes() == (reports / "results.html").read_bytes()
    url = page_file.resolve().as_uri()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            problems: list[str] = []
            requests: list[str] = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")
            page.wait_for_load_state("networkidle")
            assert problems == []
            assert requests == [url]

            # the points of each panel's longest drawn line (<g id="panelN-series-M"><path d=...>)
            points = page.evaluate("""() => Object.fromEntries(
                Array.from(document.querySelectorAll('figure.panel')).map(f => [
                    f.dataset.panel,
                    Math.max(0, ...Array.from(f.querySelectorAll('g[id*="-series-"] path'))
                        .map(p => ((p.getAttribute('d') || '').match(/[ML]/g) || []).length))]))""")
            assert list(points) == ["Request Rate", "Latency", "Error Rate", "Token Usage"]
            # a point a second while the agent had traffic (~20 s: 20 points measured; the
            # margin is for a busy machine, where the stack takes longer to come up)
            assert all(n >= 12 for n in points.values()), points
            journal = json.loads((reports / "results.json").read_text())
            for title, n in points.items():
                most = max(sum(v is not None for _t, v in s["points"])
                           for s in journal["panels"][title]["series"])
                assert n <= most, (title, n, most)  # drawn from the journal, nothing invented

            banner = page.locator("header > :first-child")
            assert banner.get_attribute("id") == "first-failure"
            assert banner.inner_text().startswith(f"FAILED — first failing gate: {FIRST_FAILURE}")
            assert banner.bounding_box()["y"] < 60  # the first thing on the screen
            opened = page.evaluate("""() => Array.from(document.querySelectorAll(
                'details.scenario')).map(d => [d.dataset.scenario, d.open])""")
            assert opened == [["always-red", True], ["smoke", False]]

            shot = reports / "results.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 50_000
    (REPO / "reports").mkdir(exist_ok=True)
    shutil.copy(shot, REPO / "reports" / "results.png")  # git-ignored, for people to look at
